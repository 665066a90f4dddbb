# sdeid.test=console: a command loop the test drives over the serial console
# (tests/test_linux_guest.py writes lines to QEMU's stdin, -serial stdio).
#
# Prints "SDEID-CMD? N" when it waits for command N, runs the line it reads
# with the shell, then prints "SDEID-CMD-DONE N rc=RC".  `reboot -f` and
# `poweroff -f` never come back.  End of input ends the loop (init then
# powers off).
stty -echo 2>/dev/null          # the test's input is not echoed into the log
n=0
while :; do
    n=$((n + 1))
    echo "SDEID-CMD? $n"
    IFS= read -r cmd || { echo "SDEID-CMD-EOF"; break; }
    eval "$cmd"
    echo "SDEID-CMD-DONE $n rc=$?"
done
