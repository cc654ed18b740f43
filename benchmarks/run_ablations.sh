#!/usr/bin/env bash
# The shipped ablations (benchmarks/ablations/*.toml), each on the glyph set and on Omniglot minimal
# (../shared/data/omniglot), 3 seeds, 600 fixed episodes. Run from the repository root:
#
#   bash benchmarks/run_ablations.sh                 # all of them, in priority order
#   bash benchmarks/run_ablations.sh glyphs-7 omniglot-5   # only these (prefixes of the file names)
#
# Every run is resumable: rerun the same command and finished (cell, seed) pairs are skipped.
# Results: results/ablations/<name>/{results.json,summary.md,plots/}. Sized for a shared 2-core CPU
# (2 epochs per training cell); raise [train] epochs in the TOML files for stronger encoders.
set -euo pipefail
cd "$(dirname "$0")/.."
ORDER=(7-metric-vs-episodic 5-heads-shots 1-joint-ce 6-domain-shift 3-miner 4-m-per-class 2-losses)
OUT=${OUT:-results/ablations}
FILTER=("$@")
selected() {  # no arguments: everything; else names starting with one of the arguments
  [ ${#FILTER[@]} -eq 0 ] && return 0
  local p
  for p in "${FILTER[@]}"; do [[ $1 == "$p"* ]] && return 0; done
  return 1
}
for grid in "${ORDER[@]}"; do
  for data in glyphs omniglot; do
    name="$data-$grid"
    selected "$name" || continue
    echo "== $name" >&2
    nice -n 10 fewshot ablate --grid "benchmarks/ablations/$name.toml" --out "$OUT/$name" --threads 2
  done
done
