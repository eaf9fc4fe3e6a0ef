"""Splice an experiment's generated RULER tables into the README (between the ruler-results markers), so
the README's results are the pipeline's own output, never retyped:

    .venv/bin/python scripts/readme_results.py scale      # after `snakemake --cores 2`
"""

import sys
from pathlib import Path

BEGIN, END = "<!-- ruler-results:begin -->", "<!-- ruler-results:end -->"


def main(experiment: str = "scale") -> None:
    root = Path(__file__).resolve().parents[1]
    tables = root / "results" / experiment / "tables" / "ruler" / "ruler.md"
    readme = root / "README.md"
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        sys.exit(f"README.md lacks the {BEGIN} ... {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    body = tables.read_text().strip()
    source = f"<!-- generated from results/{experiment}/tables/ruler/ruler.md by scripts/readme_results.py -->"
    readme.write_text(f"{head}{BEGIN}\n{source}\n\n{body}\n\n{END}{tail}")
    print(f"README.md: results of {experiment} spliced in ({len(body.splitlines())} lines)")


if __name__ == "__main__":
    main(*sys.argv[1:])
