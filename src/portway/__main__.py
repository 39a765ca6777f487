"""`python -m portway` and the `portway` command (pyproject's entry point).

The CLI is imported inside `main()`, not at the top: uvicorn starts each of several workers with
multiprocessing's spawn, which re-imports the script that started the parent. The `portway` script imports
only this module, so a worker does not load the CLI (Typer, Rich and every command: ~11 MB per worker).
"""


def main() -> None:
    from portway.cli import main as cli

    cli()


if __name__ == "__main__":
    main()
