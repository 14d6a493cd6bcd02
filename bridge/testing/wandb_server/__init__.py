"""A W&B server for tests: the real `wandb` SDK runs online against it, `wandb sync` uploads to it.

Checked with wandb 0.31.0 (wandb-core 0.31.0): every GraphQL operation that `wandb.init` (new
and resumed), `run.log`, `config.update`, `summary.update`, `run.alert`, `log_artifact`,
`finish`, `wandb sync` and the Public API reads used in tests send is answered; any other one is
answered with a GraphQL error and recorded in `WandbServer.unknown_operations`.

    with WandbServer() as server:
        run = wandb.init(project="p", settings=wandb.Settings(
            base_url=server.url, api_key=server.api_key))
        ...
        assert server.run(run.id, project="p").steps() == list(range(50))
"""

from bridge.testing.wandb_server.runs import AlertRecord, ArtifactRecord, RunRecord
from bridge.testing.wandb_server.server import API_KEY, WandbServer

__all__ = ["API_KEY", "AlertRecord", "ArtifactRecord", "RunRecord", "WandbServer"]
