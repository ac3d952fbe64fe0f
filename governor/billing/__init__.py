"""Billing: usage reports and invoices from hourly rollups, priced by the policy's plans.

* :mod:`.report` -- ``usage_report`` and ``invoice`` (Decimal money, one rounding rule);
* :mod:`.quantities` -- reading rollups over any period with exact integer shares;
* :mod:`.plans` -- what billing needs from the policy (Protocols);
* :mod:`.formats` -- table, csv, json and FinOps FOCUS output;
* :mod:`.cli` -- ``governor usage`` and ``governor bill``.
"""
