#!/usr/bin/env bash
# Launching on TPU pod slices (create the slice, copy the code, install, run lm.launch on every
# worker, stream logs, delete) is not implemented yet. Until it is, run
#   python -m lm.launch --config configs/NAME.py
# on each worker yourself.
echo "launch_tpu.sh: not ready yet; TPU pod launching is not implemented." >&2
exit 1
