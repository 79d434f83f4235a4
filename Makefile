# Two commands for a new user: `make demo` (the main job) and `make test` (the suite).
# Both install what is missing first (scripts/install.sh is idempotent).
.PHONY: demo test install bench clean

install:
	@bash scripts/install.sh

demo: install
	@bash scripts/demo.sh $(ARGS)

test: install
	@.venv/bin/python -m pytest $(PYTEST_ARGS)

bench: install
	@.venv/bin/python bench/grpo_vs_trl.py

clean:
	rm -rf runs .pytest_cache
