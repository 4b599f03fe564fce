# The two commands of the README: `make demo` and `make test`. Both set up first.
.PHONY: setup demo test lint unit lab
setup:
	deploy/setup.sh

demo: setup
	deploy/demo.sh

test: setup
	deploy/test.sh

lint: setup
	.venv/bin/ruff check .
	.venv/bin/mypy
	.venv/bin/lint-imports

unit: setup
	.venv/bin/python -m pytest -m "not lab"

lab: setup
	deploy/lab/run
