"""The load-balanced mode (INFERENCE_MODE=load_balance): the instances behind
one entry point and how requests reach them.

  instance.py    one instance (a local child process or a remote upstream) and its state
  supervisor.py  starts, watches, drains, restarts and scales the local instances
  health.py      the health checks and what their verdicts do to an instance
  autoscale.py   the target count of local instances, from queues and latency
  balancer.py    which instance takes the next request: one function per strategy
  proxy.py       forwarding a request to an instance, with failover
  fanout.py      what is asked of every instance at once, answered as one

The entry point's Flask app and routes are src/api/load_balanced_app.py,
routes/load_balanced.py and routes/cluster.py.
"""
