"""Experiment tracking: stored runs exported to MLflow and TensorBoard, and MLflow logging while a
run goes. Plain functions over the store; `mlflow` and TensorBoard's writer load only when used.

    run_id = export_to_mlflow(store, 7, "http://127.0.0.1:5000")      # tracking.mlflow_export
    folder = export_to_tensorboard(store, 7, "tb-logs")                # tracking.tensorboard_export
    python cli.py export 7 --mlflow http://127.0.0.1:5000 --tensorboard tb-logs

The names a run is logged under (params, per-round metrics, tags) have one home: `tracking.records`.
"""
