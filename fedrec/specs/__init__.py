"""Message specs: what the two halves of each method exchange, declared once.

One module per method (``fedrec.specs.<method>``), imported by both its server half
(``strategies/<method>.py``) and its client half (``clients/<method>.py``). A spec holds:

- the method's ``Params`` dataclass (``strategy.params.*`` keys);
- record-key constants: query actions, config keys, metric keys, state fields;
- pack/unpack of its arrays (flat parameter layouts, row-sparse uploads: see
  :mod:`fedrec.messages`).

No logic and no flwr import: a spec only says what travels and in which shape.
"""
