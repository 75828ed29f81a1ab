-- Why a job's last attempt failed, as a kind (pilot_lost, timeout, rejected_input, ...): it
-- decides whether the job is retried, and labels metrics and completion events.
ALTER TABLE jobs ADD COLUMN failure text;
