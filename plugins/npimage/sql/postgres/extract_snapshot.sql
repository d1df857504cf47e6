-- First statement of an extract transaction: every query after it reads the same snapshot,
-- so the changed rows, the current id list and the watermark agree with each other.
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY;
