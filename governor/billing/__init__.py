"""Billing: usage reports and invoices from hourly rollups, priced by the policy's plans.

* :mod:`.report` -- ``usage_report``, ``invoice`` (Decimal money, one rounding rule) and
  ``sliced_invoice`` (the invoice per node and hour, day or month);
* :mod:`.quantities` -- reading rollups over any period with exact integer shares;
* :mod:`.plans` -- what billing needs from the policy (Protocols);
* :mod:`.formats` -- table, csv and json output;
* :mod:`.focus` -- FinOps FOCUS 1.0 output (``bill --format focus``);
* :mod:`.cli` -- ``governor usage`` and ``governor bill``.
"""
