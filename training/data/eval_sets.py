"""Held-in eval definitions: `{"data": file, "items": [{"index": n, ...}, ...]}`, each item naming a record of
the data file (relative to the definition) by its 0-based number. The demos ask these records' questions.

The definition is the user's `--eval` file, so a missing file, invalid JSON, a wrong shape or an index past the
data is a `DataError` naming the file, not a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

from training.data.records import Record, load_records
from training.errors import DataError


def load_eval_definition(eval_file: Path) -> list[tuple[dict, Record]]:
    """Each item of the definition with the record it names, in the definition's order."""
    eval_file = Path(eval_file)
    try:
        spec = json.loads(eval_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{eval_file}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{eval_file}: invalid JSON ({error})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("data"), str) or not isinstance(spec.get("items"), list):
        raise DataError(f'{eval_file}: an eval definition is {{"data": "<file>", "items": [...]}}')
    records = load_records([eval_file.parent / spec["data"]]).records
    for number, item in enumerate(spec["items"]):
        index = item.get("index") if isinstance(item, dict) else None
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(records):
            raise DataError(f"{eval_file}: items[{number}]: 'index' must be a record number below {len(records)}")
    return [(item, records[item["index"]]) for item in spec["items"]]
