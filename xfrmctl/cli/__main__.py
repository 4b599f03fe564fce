from xfrmctl.cli import main

main(prog_name="xfrmctl")
