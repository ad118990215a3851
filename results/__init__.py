"""The results stage: tables, figures and a summary built from the result records that the other
stages append to `results/records/*.jsonl` (the record contract: kdcl_common/records.py). Run it
with `python -m results`."""
