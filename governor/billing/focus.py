"""FinOps FOCUS 1.0 output of bills (``governor bill --format focus [--by hour|day|month]``).

FOCUS (https://focus.finops.org, the 1.0 specification's columns in
``specification/columns/``) is a CSV of *charges*: here one row per group, resource, price
version, node and slice of a :class:`~governor.billing.sliced.SlicedInvoice`.  The version is
1.0 because it is the newest that ``focus-validator`` validates on Python 3.11 (its 1.0.0
release; its 2.x releases, for later FOCUS versions, need Python 3.12);
``tests/unit/test_billing_focus.py`` runs it on this output and requires zero failures.

Semantics (docs/billing.md, "FOCUS"):

* every row is a usage charge (ChargeCategory ``Usage``, ChargeFrequency ``Usage-Based``,
  ChargeClass null: governor never corrects a past period, a past bill never changes) at
  list prices (PricingCategory ``Standard``): BilledCost = EffectiveCost = ListCost =
  ContractedCost = the row's share of its invoice line, so the rows add up to the invoice's
  total exactly, and ListUnitPrice = ContractedUnitPrice = the plan's price;
* the billing account is the tenant, the sub account its group (null for the tenant's own
  cgroup), the resource a group's cgroup on one node;
* units follow FOCUS's UnitFormat (``Core-Hours``, ``GiB-Hours``, ``GiB``, ``Kills``);
  PricingQuantity is what was billed, ConsumedQuantity what was metered (they differ for
  memory billed by reservation);
* governor has no regions, availability zones or commitment discounts: those columns are
  present (the validator requires them) and null.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Final, TextIO

from governor.billing.sliced import SlicedInvoice

#: the FOCUS version written, and the focus-validator release that checks it
FOCUS_VERSION: Final = "1.0"
FOCUS_VALIDATOR: Final = "1.0.0"

#: every column of FOCUS 1.0 (its 43 column IDs), in alphabetical order (the specification's
#: Column Naming and Ordering allows it); no custom (``x_``) columns
FOCUS_COLUMNS: Final = (
    "AvailabilityZone", "BilledCost", "BillingAccountId", "BillingAccountName",
    "BillingCurrency", "BillingPeriodEnd", "BillingPeriodStart", "ChargeCategory",
    "ChargeClass", "ChargeDescription", "ChargeFrequency", "ChargePeriodEnd",
    "ChargePeriodStart", "CommitmentDiscountCategory", "CommitmentDiscountId",
    "CommitmentDiscountName", "CommitmentDiscountStatus", "CommitmentDiscountType",
    "ConsumedQuantity", "ConsumedUnit", "ContractedCost", "ContractedUnitPrice",
    "EffectiveCost", "InvoiceIssuerName", "ListCost", "ListUnitPrice", "PricingCategory",
    "PricingQuantity", "PricingUnit", "ProviderName", "PublisherName", "RegionId",
    "RegionName", "ResourceId", "ResourceName", "ResourceType", "ServiceCategory",
    "ServiceName", "SkuId", "SkuPriceId", "SubAccountId", "SubAccountName", "Tags",
)

#: the columns focus-validator 1.0.0's FOCUS 1.0 rules still check under their pre-1.0 IDs
#: (its ``Provider_Required``, ``Publisher_Required``, ``InvoiceIssuer_Required``,
#: ``ResourceID_Required``, and ``SkuPriceId_Nullable``, which reads FOCUS 0.5's ChargeType):
#: legacy ID -> the FOCUS 1.0 column whose value it repeats.  Written after the 43 columns
#: with ``governor bill --format focus --legacy-columns``, so that validator, as released,
#: accepts the file with zero failures; a FOCUS 1.0 reader ignores them.
LEGACY_COLUMNS: Final[dict[str, str]] = {
    "InvoiceIssuer": "InvoiceIssuerName", "Provider": "ProviderName",
    "Publisher": "PublisherName", "ResourceID": "ResourceId", "ChargeType": "ChargeCategory",
}


def with_legacy(cells: tuple[str | None, ...]) -> tuple[str | None, ...]:
    """``cells`` (one row in :data:`FOCUS_COLUMNS` order) with the :data:`LEGACY_COLUMNS`
    appended."""
    return cells + tuple(cells[_INDEX[c]] for c in LEGACY_COLUMNS.values())


_INDEX: Final = {c: i for i, c in enumerate(FOCUS_COLUMNS)}

#: resource -> (ServiceCategory, what the charge is, for ChargeDescription); a resource of
#: a controller module not listed here is "Other" and described by its name
SERVICES: Final[dict[str, tuple[str, str]]] = {
    "cpu": ("Compute", "CPU time"),
    "memory": ("Compute", "memory"),
    "hugetlb": ("Compute", "huge pages"),
    "oom_kill": ("Compute", "OOM kills"),
    "storage": ("Storage", "container writable layers"),
    "io_read": ("Storage", "block IO read"),
    "io_write": ("Storage", "block IO written"),
}
#: the ServiceCategory values of FOCUS 1.0
SERVICE_CATEGORIES: Final = (
    "AI and Machine Learning", "Analytics", "Business Applications", "Compute", "Databases",
    "Developer Tools", "Multicloud", "Identity", "Integration", "Internet of Things",
    "Management and Governance", "Media", "Migration", "Mobile", "Networking", "Security",
    "Storage", "Web", "Other")
#: FOCUS UnitFormat: data sizes keep their abbreviation (singular and plural alike)
_SIZES: Final = frozenset(f"{p}{u}" for p in ("", "K", "M", "G", "T", "P", "E",
                                              "Ki", "Mi", "Gi", "Ti", "Pi", "Ei")
                          for u in ("B", "b"))
_TIMES: Final = frozenset(("second", "minute", "hour", "day", "month", "year"))
#: the prefix of the tags governor defines (FOCUS 1.0 Tags: provider-defined keys carry one)
TAG_PREFIX: Final = "governor/"
PROVIDER: Final = "governor"


def focus_unit(unit: str) -> str:
    """A bill's unit in FOCUS's UnitFormat: ``core-hour`` -> ``Core-Hours``,
    ``GiB-hour`` -> ``GiB-Hours``, ``GiB`` -> ``GiB``, ``kill`` -> ``Kills``."""
    def noun(word: str) -> str:
        return word if word in _SIZES else word[:1].upper() + word[1:]

    head, _, tail = unit.rpartition("-")
    if head and tail.lower() in _TIMES:
        return f"{noun(head)}-{tail.capitalize()}s"
    if unit in _SIZES:
        return unit
    word = noun(unit)
    return word if word.endswith("s") else word + "s"


def service(resource: str) -> tuple[str, str, str]:
    """``(ServiceCategory, ServiceName, description)`` of a resource."""
    category, what = SERVICES.get(resource, ("Other", resource))
    return category, f"{PROVIDER} {category.lower()}", what


def _iso(dt: datetime) -> str:
    """FOCUS Date/Time Format: ``YYYY-MM-DDTHH:mm:ssZ`` (a bill's times are whole seconds
    at the finest: a window given to the microsecond keeps them after the seconds)."""
    return dt.isoformat().replace("+00:00", "Z")


def _dec(v: Decimal) -> str:
    """A FOCUS Decimal: never E notation (``str()`` writes ``1E-7``), always a decimal
    point (readers such as pandas, so focus-validator, take a column of whole numbers, a
    JPY bill or a price of 1, for integers)."""
    text = format(v, "f")
    return text if "." in text else text + ".0"


def _cells(inv: SlicedInvoice, provider: str) -> Iterator[tuple[str | None, ...]]:
    """Each charge's cells in :data:`FOCUS_COLUMNS` order (None: null).  What repeats (a
    resource's unit and service, a group's ids and tags on a node, the slices' times) is
    made once: an hourly month of 1,000 groups is 3.6 million rows."""
    times: dict[datetime, str] = {}
    fixed: dict[tuple[str, str, str, int], tuple[str, str, str, str, str, str, str, str,
                                                  str | None, str | None, str]] = {}
    prices: dict[Decimal, str] = {}

    def when(dt: datetime) -> str:
        got = times.get(dt)
        if got is None:
            got = times[dt] = _iso(dt)
        return got

    billing_end, billing_start = when(inv.end), when(inv.start)
    for c in inv.charges:
        key = (c.node, c.path, c.resource, c.price_version)
        same = fixed.get(key)
        if same is None:
            category, service_name, what = service(c.resource)
            unit = focus_unit(c.unit)
            grouped = "/" in c.path
            basis = f", memory basis {inv.memory_basis}" if c.resource == "memory" else ""
            tags = {f"{TAG_PREFIX}tenant": inv.tenant, f"{TAG_PREFIX}node": c.node}
            if grouped:
                tags[f"{TAG_PREFIX}group"] = c.group
            same = fixed[key] = (
                f"{what} of {c.path} on {c.node} (plan {inv.plan} v{c.price_version}{basis})",
                unit, f"{provider}://{c.node}/{c.path}", f"{c.path} on {c.node}", category,
                service_name, f"{inv.plan}/{c.resource}",
                f"{inv.plan}/{c.resource}/v{c.price_version}",
                c.path if grouped else None, c.group if grouped else None,
                json.dumps(tags, sort_keys=True))
        (description, unit, resource_id, resource_name, category, service_name, sku,
         sku_price, sub_id, sub_name, tags_json) = same
        price = prices.get(c.unit_price)
        if price is None:
            price = prices[c.unit_price] = _dec(c.unit_price)
        cost = _dec(c.amount)
        yield (
            None,                                   # AvailabilityZone
            cost,                                   # BilledCost
            inv.tenant, inv.tenant,                 # BillingAccountId, BillingAccountName
            inv.currency,                           # BillingCurrency
            billing_end, billing_start,             # BillingPeriodEnd, BillingPeriodStart
            "Usage", None,                          # ChargeCategory, ChargeClass
            description,                            # ChargeDescription
            "Usage-Based",                          # ChargeFrequency
            when(c.charge_end), when(c.charge_start),  # ChargePeriodEnd, ChargePeriodStart
            None, None, None, None, None,           # CommitmentDiscount*
            _dec(c.consumed), unit,                 # ConsumedQuantity, ConsumedUnit
            cost, price,                            # ContractedCost, ContractedUnitPrice
            cost,                                   # EffectiveCost
            provider,                               # InvoiceIssuerName
            cost, price,                            # ListCost, ListUnitPrice
            "Standard",                             # PricingCategory
            _dec(c.quantity), unit,                 # PricingQuantity, PricingUnit
            provider, provider,                     # ProviderName, PublisherName
            None, None,                             # RegionId, RegionName
            resource_id, resource_name, "cgroup",   # ResourceId, ResourceName, ResourceType
            category, service_name,                 # ServiceCategory, ServiceName
            sku, sku_price,                         # SkuId, SkuPriceId
            sub_id, sub_name,                       # SubAccountId, SubAccountName
            tags_json,                              # Tags
        )


def focus_rows(inv: SlicedInvoice, *, provider: str = PROVIDER) -> list[dict[str, str | None]]:
    """The FOCUS rows of ``inv``, one per charge: column -> the CSV cell (None: null)."""
    return [dict(zip(FOCUS_COLUMNS, cells, strict=True)) for cells in _cells(inv, provider)]


def render_focus(invoices: Sequence[SlicedInvoice], out: TextIO, *,
                 provider: str = PROVIDER, legacy: bool = False) -> None:
    """The FOCUS CSV of ``invoices``: the header, then every invoice's rows (null: an
    empty field, CSV's null; FOCUS Null Handling forbids placeholder values); ``legacy``:
    with the :data:`LEGACY_COLUMNS` after them."""
    w = csv.writer(out, lineterminator="\n")
    w.writerow(FOCUS_COLUMNS + (tuple(LEGACY_COLUMNS) if legacy else ()))
    for inv in invoices:
        rows = _cells(inv, provider)
        w.writerows(map(with_legacy, rows) if legacy else rows)
