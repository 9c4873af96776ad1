"""``honed status``: the daemon, the running job and the queue, from the store and the
workspace's lock. Fast (no torch) and right when the daemon is down: whether a daemon
runs is decided by the OS lock, never by what a dead one last wrote."""

from __future__ import annotations

from datetime import UTC, datetime

from honed.daemon.lock import daemon_running, read_info

ACTIVE_STATES = ("running", "evaluating")
WAITING_STATES = ("queued", "paused", "skipped")


def job_summary(job) -> dict:
    """A job as status and ``queue list`` show it."""
    out = {
        "job": job.id, "state": job.state, "track": job.track, "priority": job.priority,
        "datasets": job.dataset_ids, "run": job.run_id, "failures": job.failures,
        "created_at": job.created_at.isoformat(timespec="seconds"),
    }
    if job.not_before and job.not_before > datetime.now(UTC):
        out["retry_at"] = job.not_before.isoformat(timespec="seconds")
    if job.error:
        out["error"] = job.error.splitlines()[0]
    if job.state in ("running", "evaluating") and job.progress:
        out["progress"] = job.progress
    return out


def _track_summary(store, track) -> dict:
    deployed = store.deployed_adapter(track.name)
    return {"name": track.name, "base_version": track.base_version,
            "deployed": {"adapter": deployed.id, "name": deployed.name} if deployed else None}


def status_info(workspace, store) -> dict:
    """Everything ``honed status`` shows, as plain data."""
    up = daemon_running(workspace.root)
    daemon: dict = {"up": up}
    if up:
        info = read_info(workspace.root)
        daemon.update(pid=info.pid, host=info.host, since=info.started_at, worker=info.worker)
        worker = store.get_worker(info.worker) if info.worker else None
        if worker is not None:
            daemon["activity"] = (worker.state or {}).get("activity")
            daemon["heartbeat_age_s"] = round((datetime.now(UTC) - worker.heartbeat_at).total_seconds(), 1)
    else:
        last = store.list_workers(str(workspace.root), limit=1)
        if last:
            w = last[0]
            daemon["last_seen"] = (w.stopped_at or w.heartbeat_at).isoformat(timespec="seconds")
            daemon["last_exit"] = "stopped" if w.stopped_at else "died without stopping"
    # One read for both lists: two would let a job that pauses between them show as
    # running and as paused in the same snapshot.
    jobs = [job_summary(j) for j in store.list_jobs(states=ACTIVE_STATES + WAITING_STATES)]
    running = [j for j in jobs if j["state"] in ACTIVE_STATES]
    waiting = [j for j in jobs if j["state"] in WAITING_STATES]
    base = store.get_base()
    return {
        "workspace": str(workspace.root),
        "store": store.display_url,
        "daemon": daemon,
        "stop_file": workspace.stop_file.exists(),
        "running": running,
        "queue": waiting,
        "base": {"version": base.version, "source": base.source} if base else None,
        "tracks": [_track_summary(store, t) for t in store.list_tracks()],
        "datasets": store.count_datasets(),
        "runs": [
            {"run": r.id, "status": r.status, "track": r.track,
             "step": (r.final_metrics or {}).get("step"), "started_at": str(r.started_at)}
            for r in store.list_runs(limit=5)
        ],
    }
