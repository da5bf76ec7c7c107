"""``result.to_pandas()``: a result's records as a :class:`pandas.DataFrame`, with the same fields as its
JSON report (``result.to_dict()``), so that the two never disagree.

A result class declares where its records are in ``to_dict()``, once, in its class statement::

    class MislabelResult(ToPandas, records="ranking"): ...                   # one row per record
    class InfluenceResult(ToPandas, records="test", explode=("proponents", "opponents")): ...

With ``explode``, each record's lists under those keys become the rows: one per list entry, with a
``side`` column (the key) and a 1-based ``rank`` within the list, beside the entry's own fields and its
record's other fields, which are prefixed with ``<records>_`` (``test_label``, ``test_index``).
Any other list in a record stays one cell. pandas is imported only here, when it is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Iterator

from influence_cli.errors import InfluenceError

if TYPE_CHECKING:
    import pandas


def _pandas() -> Any:
    """The pandas module, or a one-line :class:`~influence_cli.errors.InfluenceError` saying how to get it."""
    try:
        import pandas
    except ImportError:
        raise InfluenceError("to_pandas needs pandas: pip install 'influence-cli[pandas]'") from None
    return pandas


def _prefixed(record: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k if k.startswith(prefix) else prefix + k: v for k, v in record.items()}


def exploded(records: list[dict[str, Any]], prefix: str, keys: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    """One row per entry of each record's lists under ``keys``: the record's other fields (prefixed),
    ``side`` (the key), ``rank`` (1-based) and the entry's fields."""
    for record in records:
        parent = _prefixed({k: v for k, v in record.items() if k not in keys}, prefix)
        for key in keys:
            for rank, entry in enumerate(record[key], start=1):
                yield {**parent, "side": key, "rank": rank, **entry}


class ToPandas:
    """Adds :meth:`to_pandas` to a result class declared with ``records=`` (and optionally ``explode=``)."""

    _records: ClassVar[str]
    _explode: ClassVar[tuple[str, ...]]

    def __init_subclass__(cls, *, records: str, explode: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._records, cls._explode = records, explode

    def to_dict(self) -> dict[str, Any]:
        """The result's JSON layout (each result class defines it)."""
        raise NotImplementedError

    def to_pandas(self) -> "pandas.DataFrame":
        """The result's records (``to_dict()[<records>]``) as a DataFrame, one row each (see the module
        docstring for exploded results). Needs pandas (``pip install 'influence-cli[pandas]'``)."""
        pd = _pandas()
        records = self.to_dict()[self._records]
        if self._explode:
            records = list(exploded(records, self._records + "_", self._explode))
        return pd.DataFrame.from_records(records)
