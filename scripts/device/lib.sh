# scripts/device/lib.sh: what the device scripts share, sourced after OUT
# is set and exists.
#
# step NAME LOG COMMAND...: runs the command with its output in $OUT/LOG,
# sets status=1 when it fails, and adds a line (name, exit status, seconds,
# log) to $OUT/summary.txt and the terminal.
status=0
step() {
  local name=$1 log=$2
  shift 2
  local t0=$SECONDS
  "$@" >"$OUT/$log" 2>&1
  local rc=$?
  [ $rc -ne 0 ] && status=1
  printf '%-36s rc=%d %4ds  %s\n' "$name" "$rc" "$((SECONDS - t0))" "$log" | tee -a "$OUT/summary.txt"
}
