#!/usr/bin/env bash
# launch_tpu.sh: run `python -m lm.launch` on every worker of a Cloud TPU pod slice.
#
# Usage:
#   launch_tpu.sh --project P --zone Z --accelerator TYPE --name NAME [options] [-- LAUNCH_ARGS...]
#
# Creates the slice NAME (or reuses it), copies this repository to ~/lm on every worker, installs it there
# (a venv in ~/lm/.venv with requirements.txt and the jax[tpu] wheel of the jax version pinned in
# requirements.txt), then runs `python -m lm.launch --distributed=on LAUNCH_ARGS...` on all workers at once.
# Output streams here (only process 0 logs) and is also written to ~/lm/train.log on each worker. The exit
# status is that of the run. Arguments after `--` reach lm.launch unchanged, whatever characters they hold.
#
# Required:
#   --project P            Google Cloud project.
#   --zone Z               Zone of the slice, e.g. us-east5-a.
#   --accelerator TYPE     TPU type: v4-8, v5p-64, v5litepod-16, v6e-8, ... (not needed with --delete).
#   --name NAME            Name of the slice (and of its queued resource).
# Options:
#   --version RUNTIME      TPU software version. Default by accelerator: v5p -> v2-alpha-tpuv5,
#                          v5litepod -> v2-alpha-tpuv5-lite, v6e -> v2-alpha-tpuv6e, v2/v3/v4 -> tpu-ubuntu2204-base;
#                          other types need --version.
#   --spot                 Request spot capacity (the slice may be preempted; preempted slices must be deleted).
#   --no-queue             Create the slice directly with `tpu-vm create` instead of a queued resource.
#   --queue-timeout SECS   How long to wait for a queued resource to become ACTIVE (default 3600). On timeout the
#                          request stays queued: launch again to keep waiting, or --delete it.
#   --skip-setup           Do not copy the code nor install it (the workers already have it).
#   --delete               Delete the slice (its queued resource with --force, or the TPU VM) and exit.
#   --delete-after         Delete the slice once the run ends, whether it succeeded or not.
#   --dry-run              Print the commands instead of running them, one per line after "+ ", shell-quoted so
#                          they can be copied. Assumes the slice does not exist yet and does not wait for it.
#   -h, --help             Show this help.
#
# Create or reuse: if `gcloud compute tpus tpu-vm describe NAME` finds a READY slice, it is reused (and said so);
# one in another state (e.g. PREEMPTED) is an error. A queued resource NAME that exists but is not ACTIVE yet is
# waited for, not created again. The code copied is `git archive HEAD` in a git checkout (commit your changes
# first), else the directory without .venv, runs and .git. Each step's command is echoed to stderr after "+ " as it
# runs. Ctrl-C stops the streaming but may leave the workers running; stop them with
#   gcloud compute tpus tpu-vm ssh NAME --zone Z --project P --worker=all --command 'pkill -f "lm.launch"'
#
# Example: Llama 2 7B on a v5p-64 slice (8 workers), queued spot capacity, deleted at the end:
#   ./launch_tpu.sh --project my-proj --zone us-east5-a --accelerator v5p-64 --name llm-v5p --spot --delete-after \
#       -- --config configs/llama2_7b.py --config.data.path=/mnt/shared/data.jsonl \
#          --config.train.run_dir=/mnt/shared/runs/llama2_7b
# data.path and run_dir must be on a filesystem every worker mounts at the same path (a GCS bucket mounted with
# gcsfuse, or Filestore NFS): every worker reads the data and writes its part of each checkpoint to the run directory.

set -euo pipefail

if ((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] < 404)); then
  echo "launch_tpu.sh: needs bash 4.4 or newer, this is $BASH_VERSION (on macOS: brew install bash)" >&2
  exit 1
fi

readonly REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly PROG="launch_tpu.sh"
readonly LIBTPU_URL="https://storage.googleapis.com/jax-releases/libtpu_releases.html"
readonly POLL_SECONDS=30

PROJECT="" ZONE="" ACCELERATOR="" NAME="" VERSION="" JAX_VERSION=""
SPOT=0 QUEUE=1 QUEUE_TIMEOUT=3600 SKIP_SETUP=0 DELETE=0 DELETE_AFTER=0 DRY_RUN=0
LAUNCH_ARGS=()

usage() {  # The header comment above, without the leading "# ".
  sed -n '2,/^$/{/^#/s/^# \{0,1\}//p;}' "${BASH_SOURCE[0]}"
}

die() {  # die CODE MESSAGE
  echo "$PROG: $2" >&2
  exit "$1"
}

usage_error() {
  echo "$PROG: $1" >&2
  echo "Run '$PROG --help' for usage." >&2
  exit 2
}

note() {
  echo "$PROG: $*" >&2
}

quote() {  # One word for a shell: as is when it is plain, else single-quoted (printf %q if it holds control chars).
  local word=$1
  if [[ $word =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$word"
  elif [[ $word == *[[:cntrl:]]* ]]; then
    printf '%q' "$word"
  else
    printf "'%s'" "${word//\'/\'\\\'\'}"
  fi
}

quote_all() {  # The words, quoted and joined by spaces.
  local word out=()
  for word in "$@"; do
    out+=("$(quote "$word")")
  done
  printf '%s' "${out[*]}"
}

run() {  # Echoes a command after "+ " (stdout in a dry run, stderr otherwise) and runs it unless dry.
  if ((DRY_RUN)); then
    printf '+ %s\n' "$(quote_all "$@")"
  else
    printf '+ %s\n' "$(quote_all "$@")" >&2
    "$@"
  fi
}

parse_args() {
  local opt inline
  while (($#)); do
    opt=$1
    shift
    inline=0
    if [[ $opt == --?*=* ]]; then  # --flag=value is --flag value.
      set -- "${opt#*=}" "$@"
      opt=${opt%%=*}
      inline=1
    fi
    case $opt in
      --project | --zone | --accelerator | --name | --version | --queue-timeout)
        (($#)) && [[ $1 != -* ]] || usage_error "$opt needs a value"
        case $opt in
          --project) PROJECT=$1 ;;
          --zone) ZONE=$1 ;;
          --accelerator) ACCELERATOR=$1 ;;
          --name) NAME=$1 ;;
          --version) VERSION=$1 ;;
          --queue-timeout) QUEUE_TIMEOUT=$1 ;;
        esac
        shift
        ;;
      --spot | --no-queue | --skip-setup | --delete | --delete-after | --dry-run | -h | --help)
        ((!inline)) || usage_error "$opt takes no value"
        case $opt in
          --spot) SPOT=1 ;;
          --no-queue) QUEUE=0 ;;
          --skip-setup) SKIP_SETUP=1 ;;
          --delete) DELETE=1 ;;
          --delete-after) DELETE_AFTER=1 ;;
          --dry-run) DRY_RUN=1 ;;
          -h | --help) usage; exit 0 ;;
        esac
        ;;
      --) LAUNCH_ARGS=("$@"); return 0 ;;
      *) usage_error "unknown option: $(quote "$opt")" ;;
    esac
  done
}

validate_args() {
  local missing=() flag
  for flag in project zone accelerator name; do
    [[ $flag == accelerator ]] && ((DELETE)) && continue
    local var=${flag^^}
    [[ -n ${!var} ]] || missing+=("--$flag")
  done
  ((${#missing[@]} == 0)) || usage_error "missing required option(s): ${missing[*]}"
  if [[ -n $ACCELERATOR && ! $ACCELERATOR =~ ^(v[0-9]+|tpu[0-9]+)[a-z]*-[0-9]+$ ]]; then
    usage_error "--accelerator $(quote "$ACCELERATOR") is not a TPU type (e.g. v4-8, v5p-64, v5litepod-16, v6e-8)"
  fi
  [[ $QUEUE_TIMEOUT =~ ^[0-9]+$ ]] || usage_error "--queue-timeout needs a number of seconds"
  if ((DELETE)); then
    ((!DELETE_AFTER)) || usage_error "--delete deletes and exits; use --delete-after alone to delete after a run"
    ((${#LAUNCH_ARGS[@]} == 0)) || usage_error "--delete deletes and exits; use --delete-after to delete after a run"
    return
  fi
  if ((${#LAUNCH_ARGS[@]} == 0)); then
    usage_error "nothing to run: give lm.launch arguments after --, e.g. -- --config configs/llama2_7b.py"
  fi
  if [[ -z $VERSION ]]; then
    VERSION=$(default_runtime "$ACCELERATOR") || usage_error "no default --version for $ACCELERATOR; pass --version"
  fi
  JAX_VERSION=$(jax_version)
}

default_runtime() {  # default_runtime ACCELERATOR: the TPU software version for that generation.
  case $1 in
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    *) return 1 ;;
  esac
}

jax_version() {  # The version pinned by `jax==X` in requirements.txt.
  local version
  version=$(sed -n 's/^jax==\([^[:space:]#;]*\).*/\1/p' requirements.txt | head -n 1)
  [[ $version =~ ^[0-9][0-9A-Za-z.+]*$ ]] || die 1 "no jax==VERSION pin in $REPO_ROOT/requirements.txt"
  printf '%s' "$version"
}

gcloud_tpu() {  # gcloud_tpu GROUP VERB POSITIONALS... FLAGS...: `gcloud compute tpus` in this zone and project.
  local command=(gcloud compute tpus "$1" "$2")
  shift 2
  while (($#)) && [[ $1 != -* ]]; do
    command+=("$1")
    shift
  done
  run "${command[@]}" "--zone=$ZONE" "--project=$PROJECT" "$@"
}

describe() {  # describe GROUP FIELD: prints FIELD of the slice / queued resource NAME; fails if there is none.
  gcloud compute tpus "$1" describe "$NAME" "--zone=$ZONE" "--project=$PROJECT" "--format=value($2)" 2>/dev/null
}

create_slice() {
  local spot=()
  ((SPOT)) && spot=(--spot)
  if ((QUEUE)); then
    gcloud_tpu queued-resources create "$NAME" "--node-id=$NAME" "--accelerator-type=$ACCELERATOR" \
      "--runtime-version=$VERSION" "${spot[@]}"
  else
    gcloud_tpu tpu-vm create "$NAME" "--accelerator-type=$ACCELERATOR" "--version=$VERSION" "${spot[@]}"
  fi
}

wait_until_active() {  # Polls the queued resource NAME until ACTIVE; fails on FAILED / SUSPENDED or timeout.
  local start=$SECONDS state last=""
  while true; do
    state=$(describe queued-resources state.state) || die 1 "cannot describe queued resource $NAME"
    if [[ $state != "$last" ]]; then
      note "queued resource $NAME: ${state:-unknown}"
      last=$state
    fi
    case $state in
      ACTIVE) return 0 ;;
      FAILED | SUSPENDING | SUSPENDED | DELETING)
        die 1 "queued resource $NAME is $state (queued-resources describe tells why); delete it with --delete" ;;
    esac
    if ((SECONDS - start >= QUEUE_TIMEOUT)); then
      die 1 "queued resource $NAME still $state after ${QUEUE_TIMEOUT}s; it stays queued (launch again, or --delete it)"
    fi
    sleep "$POLL_SECONDS"
  done
}

ensure_slice() {  # Creates the slice NAME, or reuses the one that exists.
  if ((DRY_RUN)); then
    create_slice
    ((QUEUE)) && note "dry run: would wait until queued resource $NAME is ACTIVE (timeout ${QUEUE_TIMEOUT}s)"
    return 0
  fi
  local state
  if state=$(describe tpu-vm state); then
    [[ $state == READY ]] || die 1 "slice $NAME exists but is $state; delete it with --delete and launch again"
    note "reusing the existing slice $NAME (READY)"
    return 0
  fi
  if ((QUEUE)); then
    if state=$(describe queued-resources state.state); then
      note "queued resource $NAME already exists ($state): waiting for it instead of creating it"
    else
      create_slice
    fi
    wait_until_active
  else
    create_slice
  fi
}

make_tarball() {  # make_tarball PATH: the code to copy (run from the repository root).
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    if [[ -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]]; then
      note "warning: uncommitted changes are not copied (the workers get git archive HEAD)"
    fi
    run git archive --format=tar.gz "--output=$1" HEAD
  else
    run tar -czf "$1" --exclude=./.venv --exclude=./runs --exclude=./.git --exclude=__pycache__ .
  fi
}

install_command() {  # The command that unpacks ~/lm.tar.gz into ~/lm and installs it, run on every worker.
  local steps=(
    'set -euo pipefail'
    'mkdir -p ~/lm'
    'tar -xzf ~/lm.tar.gz -C ~/lm'
    'cd ~/lm'
    # Python 3.11+ with venv; TPU images ship an older python3, so install python3.11 from apt if needed.
    'py=$(command -v python3.13 python3.12 python3.11 | head -n 1 || true); py=${py:-python3.11}; v=${py##*/}'
    'apt_get() { sudo DEBIAN_FRONTEND=noninteractive apt-get -qq -o DPkg::Lock::Timeout=600 "$@"; }'
    '"$py" -c "import ensurepip" 2>/dev/null || { apt_get update && apt_get install -y "$v" "$v-venv"; }'
    '[ -x .venv/bin/python ] || "$py" -m venv .venv'
    '.venv/bin/pip install -q --upgrade pip'
    '.venv/bin/pip install -q -r requirements.txt'
    ".venv/bin/pip install -q \"jax[tpu]==$JAX_VERSION\" -f $LIBTPU_URL"
  )
  local joined
  printf -v joined '%s; ' "${steps[@]}"
  printf '%s' "${joined%; }"
}

run_command() {  # The command that runs lm.launch on every worker, with LAUNCH_ARGS quoted for the remote shell.
  local python='PYTHONUNBUFFERED=1 .venv/bin/python -m lm.launch --distributed=on'
  printf 'set -o pipefail; cd ~/lm && %s %s 2>&1 | tee ~/lm/train.log' "$python" "$(quote_all "${LAUNCH_ARGS[@]}")"
}

setup_workers() {  # Copies the code to every worker and installs it.
  local tarball="${TMPDIR:-/tmp}/lm-$NAME.tar.gz"
  ((DRY_RUN)) || trap "rm -f $(quote "$tarball")" EXIT
  make_tarball "$tarball"
  gcloud_tpu tpu-vm scp "$tarball" "$NAME:lm.tar.gz" --worker=all
  gcloud_tpu tpu-vm ssh "$NAME" --worker=all --command "$(install_command)"
}

delete_slice() {
  if ((DRY_RUN)); then
    if ((QUEUE)); then
      gcloud_tpu queued-resources delete "$NAME" --force --quiet
    else
      gcloud_tpu tpu-vm delete "$NAME" --quiet
    fi
  elif describe queued-resources state.state >/dev/null; then
    gcloud_tpu queued-resources delete "$NAME" --force --quiet
  elif describe tpu-vm state >/dev/null; then
    gcloud_tpu tpu-vm delete "$NAME" --quiet
  else
    note "no slice or queued resource named $NAME in $ZONE; nothing to delete"
  fi
}

main() {
  cd "$REPO_ROOT"
  parse_args "$@"
  validate_args
  if ((DELETE)); then
    delete_slice
    return 0
  fi
  ((DRY_RUN)) || command -v gcloud >/dev/null || die 1 "gcloud not found: install the Google Cloud CLI"
  ensure_slice
  ((SKIP_SETUP)) || setup_workers
  local status=0
  gcloud_tpu tpu-vm ssh "$NAME" --worker=all --command "$(run_command)" || status=$?
  if ((DELETE_AFTER)); then
    delete_slice || note "warning: deleting $NAME failed; delete it with --delete"
  fi
  ((DRY_RUN)) || ((status == 0)) || note "the run failed (exit status $status)"
  return "$status"
}

main "$@"
