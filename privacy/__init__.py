"""Privacy internals behind `differential_privacy` (mechanisms and accountants): DP-FedAvg's
server-side sums and privacy plan, per-example gradient clipping, the membership-inference
audit and the privacy report an ethics board reads."""
