"""What a run loop needs, below every loop that runs rounds: checkpoints and evaluation.

The simulation (:mod:`fedmtl.experiment`) and the Flower deployment (:mod:`fedmtl.integrations.flower`)
both resume from, write and evaluate runs with these; neither imports the other. Import the modules
themselves (``fedmtl.runloop.checkpoint``, ``fedmtl.runloop.evaluation``): this package file imports nothing.
"""
