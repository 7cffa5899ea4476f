"""Reading the user's panel file: CSV, Stata .dta, Excel .xlsx, Parquet. Files are only ever read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError, Problem

READERS = {".csv": "csv", ".txt": "csv", ".dta": "stata", ".xlsx": "excel", ".xls": "excel",
           ".parquet": "parquet", ".pq": "parquet"}


def read_table(path: str | Path, id_column: str | None = None) -> pd.DataFrame:
    """Read a table; ``id_column`` is kept as text (adcodes such as 110000 must not become floats)."""
    path = Path(path)
    src = str(path)
    if not path.exists():
        raise InputError([Problem(src, "file not found")])
    if not path.is_file():
        raise InputError([Problem(src, "not a regular file")])
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise InputError([Problem(src, f"unsupported file type '{path.suffix}' "
                                       f"(use one of {', '.join(sorted(READERS))})")])
    if path.stat().st_size == 0:
        raise InputError([Problem(src, "file is empty")])
    try:
        if kind == "csv":
            # Only empty cells are missing: "n/a", "NA", "-" stay text so validation can quote them.
            frame = pd.read_csv(path, dtype={id_column: str} if id_column else None, encoding=text_encoding(path),
                                keep_default_na=False, na_values=[""])
        elif kind == "stata":
            frame = pd.read_stata(path, convert_categoricals=False)
        elif kind == "excel":
            frame = pd.read_excel(path, dtype={id_column: str} if id_column else None)
        else:
            frame = pd.read_parquet(path)
    except InputError:
        raise
    except UnicodeDecodeError as exc:
        # Guessing another codec (GBK, Latin-1) would decode almost any bytes into wrong text silently.
        raise InputError([Problem(src, f"is not UTF-8 text: the bytes at position {exc.start} "
                                       f"({exc.object[exc.start:exc.start + 4]!r}) are not valid UTF-8; save the "
                                       "file as UTF-8 (Excel: 'CSV UTF-8'). A file mixing encodings must be "
                                       "re-saved in one")]) from None
    except Exception as exc:  # every reader has its own exception types; the user needs the message
        raise InputError([Problem(src, f"cannot be read as {kind}: {type(exc).__name__}: {exc}")]) from None
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise InputError([Problem(src, "file has no data rows")])
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def text_encoding(path: Path) -> str:
    """UTF-8 (with or without a byte-order mark), or UTF-16 when the file starts with its byte-order mark
    (Excel's "Unicode text"); anything else must be UTF-8 and is refused with a message if it is not."""
    with path.open("rb") as fh:
        head = fh.read(2)
    return "utf-16" if head in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"


def ids_as_text(values: pd.Series) -> pd.Series:
    """Region ids as strings: 110000 and 110000.0 both become '110000'; text stays as it is."""
    if pd.api.types.is_numeric_dtype(values):
        numeric = pd.to_numeric(values, errors="coerce")
        whole = numeric.notna() & np.isfinite(numeric) & (numeric == np.round(numeric))
        out = values.astype(object).where(~whole, numeric.where(whole).astype("Int64").astype(str))
        return out.where(values.notna(), None).map(lambda v: None if v is None else str(v))
    return values.map(lambda v: None if pd.isna(v) else str(v).strip())
