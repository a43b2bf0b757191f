"""The duet autoscaler: scales a release's prefill and decode pools separately.

`signals` reads the control plane's metrics, `policy` decides (a pure function), `kube` talks
to the Deployments' scale subresource, `loop` ties them together, `cli` is `duet autoscaler`.
"""
