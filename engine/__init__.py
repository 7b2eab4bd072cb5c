"""Engine internals behind `federated_learning` (the round loop): aggregation strategies, client
trainers and their local objectives, the simulated client population, attacks, update
compression, secure aggregation, and the workloads (which data and model a config means)."""
