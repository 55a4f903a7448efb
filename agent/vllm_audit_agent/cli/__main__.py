"""`python -m vllm_audit_agent.cli`: the same as the `vllm-audit` console script."""

import sys

from vllm_audit_agent.cli.main import main

sys.exit(main())
