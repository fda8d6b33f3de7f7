"""Training and all that only training uses; it reports progress through callbacks.

Training reads in order: `launch` (start the processes) -> `plan` (options -> TrainPlan) ->
`loop` (one process's run) -> `step` (one optimisation step).
"""
