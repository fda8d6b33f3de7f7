"""Long-running loops (train, evaluate, benchmark); they report progress through callbacks.

Training reads in order: `train` (launch the processes) -> `plan` (options -> TrainPlan) ->
`loop` (one process's run) -> `step` (one optimisation step).
"""
