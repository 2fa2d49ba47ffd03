"""The ground floor of the Hub: repo ids and the client's settings, needed by anything that reads from the Hub.

- :mod:`~hf_llpf.hub_client.repo_ids`: the one parser of ``org/name[@revision]``;
- :mod:`~hf_llpf.hub_client.access`: the client, offline mode, the token, and the errors a user can act on.

Loading an endpoint (:mod:`hf_llpf.models`) reads from the Hub with these alone; publishing a path is
:mod:`hf_llpf.hub`, which sits above the run directory and the evaluation.
"""
