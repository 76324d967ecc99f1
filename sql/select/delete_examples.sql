-- delete_examples: clears one selected training set so that `eef select` can rewrite it.
-- Grain: the rows of training_examples for ($run_id, $iteration, $method).
-- Inputs: $run_id, $iteration, $method. Runs in the same transaction as the insert that follows,
-- which makes `eef select` idempotent.
DELETE FROM training_examples
WHERE run_id = $run_id
  AND iteration = $iteration
  AND method = $method;
