// Follow one job while it runs: GET /jobs/{id}/stream when the server has it (server-sent events read
// with fetch, so the key goes along), else polling GET /jobs/{id}, its metrics since the last step seen,
// its events (docs/design.md, "The dashboard" and "Live updates").

import { api, AuthNeeded, readStream } from "./api.js";
import { every, TERMINAL } from "./ui.js";

const POLL_MS = 1500;

/**
 * handlers: onJob(job), onPoints(points), onEvents(events, replace), onEnd(job).
 * `lastStep()` is the last metric step the page has (polling asks for points from there).
 * Answers stop().
 */
export function followJob(id, handlers, lastStep) {
  const controller = new AbortController();
  let stopPolling = null;
  let ended = false;

  const end = (job) => {
    if (ended) return;
    ended = true;
    if (job) handlers.onJob(job);
    handlers.onEnd(job);
  };

  const onStreamEvent = (name, data) => {
    if (name === "snapshot") {
      const job = data.job || (data.status ? data : null);
      if (job) handlers.onJob(job);
      const points = data.metrics?.data || data.points || (Array.isArray(data.metrics) ? data.metrics : null);
      if (points) handlers.onPoints(points);
      const events = data.events?.data || (Array.isArray(data.events) ? data.events : null);
      if (events) handlers.onEvents(events, true);
    } else if (name === "progress") {
      handlers.onJob(data); // {status, progress, metrics}: the page merges it into the job it has
    } else if (name === "metrics") {
      handlers.onPoints(Array.isArray(data) ? data : data.points || data.data || []);
    } else if (name === "event") {
      handlers.onEvents([data.event || data], false);
    } else if (name === "end") {
      end(data.job || (data.status ? data : null));
    }
  };

  const poll = () => {
    let events = -1;
    stopPolling = every(POLL_MS, async () => {
      const job = await api(`/jobs/${id}`);
      handlers.onJob(job);
      const points = await api(`/jobs/${id}/metrics?since_step=${lastStep()}`);
      handlers.onPoints(points.data);
      const list = await api(`/jobs/${id}/events`);
      if (list.count !== events) handlers.onEvents(list.data, true);
      events = list.count;
      if (TERMINAL.has(job.status)) {
        stopPolling();
        end(job);
      }
    });
  };

  (async () => {
    try {
      await readStream(`/jobs/${id}/stream`, onStreamEvent, controller.signal);
    } catch (err) {
      if (err instanceof AuthNeeded || controller.signal.aborted) return;
      console.warn("job stream broke off; polling instead", err);
    }
    // No stream on this server, or it closed before the job ended: poll until the end.
    if (!ended && !controller.signal.aborted) poll();
  })();

  return () => {
    controller.abort();
    stopPolling?.();
  };
}
