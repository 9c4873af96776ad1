"""``GET /metrics`` in Prometheus' text format (prometheus-client): jobs by state, the
running jobs' loss, tokens/s and steps, queue length, deployments and failures. Every
scrape reads the store, so the figures are those of all daemons on it, not of this
process."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from honed.daemon.lock import daemon_running
from honed.store import Store
from honed.store.schema import JOB_STATES

router = APIRouter(tags=["metrics"])


class StoreCollector:
    """A prometheus-client collector that reads the store at scrape time."""

    def __init__(self, workspace, store: Store) -> None:
        self.workspace, self.store = workspace, store

    def collect(self):
        counts = self.store.job_counts()
        jobs = GaugeMetricFamily("honed_jobs", "Jobs in each state.", labels=["state"])
        for state in JOB_STATES:
            jobs.add_metric([state], counts.get(state, {}).get("jobs", 0))
        yield jobs
        yield GaugeMetricFamily("honed_queue_length", "Jobs waiting to run (queued).",
                                value=counts.get("queued", {}).get("jobs", 0))
        yield CounterMetricFamily("honed_failed_attempts", "Trainer attempts that crashed or hung, over all jobs.",
                                  value=sum(c["failed_attempts"] for c in counts.values()))
        yield CounterMetricFamily("honed_jobs_failed", "Jobs that ended failed.",
                                  value=counts.get("failed", {}).get("jobs", 0))
        yield GaugeMetricFamily("honed_daemon_up", "1 while a daemon holds this workspace's lock.",
                                value=1 if daemon_running(self.workspace.root) else 0)
        families = {
            "loss": GaugeMetricFamily("honed_training_loss", "Last training loss of a running job.",
                                      labels=["job", "track"]),
            "tokens_per_s": GaugeMetricFamily("honed_training_tokens_per_second",
                                              "Training throughput of a running job.", labels=["job", "track"]),
            "step": GaugeMetricFamily("honed_training_step", "Optimizer steps done by a running job.",
                                      labels=["job", "track"]),
            "total_steps": GaugeMetricFamily("honed_training_total_steps", "Optimizer steps a running job will take.",
                                             labels=["job", "track"]),
        }
        for job in self.store.list_jobs(states=("running", "evaluating")):
            for key, family in families.items():
                value = (job.progress or {}).get(key)
                if isinstance(value, (int, float)):
                    family.add_metric([str(job.id), job.track], float(value))
        yield from families.values()
        deploys = CounterMetricFamily("honed_deployments", "Switches of a track's deployment, by action.",
                                      labels=["track", "action"])
        for (track, action), n in sorted(self.store.deployment_counts().items()):
            deploys.add_metric([track, action], n)
        yield deploys


@router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """Prometheus exposition of honed's figures."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(request.app.state.workspace, request.app.state.store))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
