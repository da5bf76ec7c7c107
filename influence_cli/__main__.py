"""``python -m influence_cli`` (also what ``torchrun -m influence_cli`` launches)."""

from influence_cli.entry import main

main()
