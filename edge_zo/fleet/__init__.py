"""Fleet fine-tuning: many devices train one model, exchanging seeds and losses, not weights.

A zeroth-order step is a function of (state, key, losses). Each round the server
(server.py) sends step t's key; every client (client.py) evaluates that step's probes on
its own minibatch and sends back the scalar losses; the server averages them, weighted by
examples, and journals them; every client applies step t from (key, averaged losses), so
all replicas stay bit-identical without a weight on the wire (oracles.py splits a step
into its probe and apply halves). wire.py is what a message holds; local.py runs a fleet
in one process; flower.py runs it on Flower (`flwr`, the `[fleet]` extra). docs/fleet.md.
It sits beside the loop (edge_zo/loop.py), reusing its run folders, journal and replay.
"""
