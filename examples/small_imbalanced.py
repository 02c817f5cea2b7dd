"""Write examples/data/clothing_3class.csv: a small, imbalanced 3-class task, as a user would bring it.

    python examples/small_imbalanced.py     then     adaray run examples/small_imbalanced.yaml

800 women's clothing reviews (the data of the built-in clothing_reviews task), drawn with a fixed
seed, labelled by their star rating as strings: liked (5 stars), mixed (3-4), disliked (1-2), about
56/34/10%. Written by pandas with its index column, as `df.to_csv(path)` does.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from orchestrator.tasks import BUILTINS

OUT = Path(__file__).resolve().parent / "data" / "clothing_3class.csv"
ROWS, SEED = 800, 0


def main() -> None:
    df = pd.read_parquet(BUILTINS["clothing_reviews"].location)
    df = df[df["Review Text"].notna()].drop_duplicates("Review Text").sample(n=ROWS, random_state=SEED)
    verdict = df["Rating"].map(lambda stars: "liked" if stars == 5 else "mixed" if stars >= 3 else "disliked")
    out = pd.DataFrame({"review": df["Review Text"].to_numpy(), "verdict": verdict.to_numpy()})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(OUT)
    print(f"{OUT}: {len(out)} rows, " + ", ".join(f"{k} {v:.0%}" for k, v in
                                                  out["verdict"].value_counts(normalize=True).items()))


if __name__ == "__main__":
    main()
