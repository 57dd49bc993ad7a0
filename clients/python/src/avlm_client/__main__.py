"""`python -m avlm_client`: the `avlm-client` command."""

from .cli import run

run()
