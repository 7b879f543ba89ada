# Conveniences; the README's commands are the scripts themselves.
.PHONY: setup demo test bench
setup: ; scripts/setup.sh
demo: ; scripts/demo.sh
test: ; scripts/test.sh
bench: setup ; .venv/bin/python bench/startup
