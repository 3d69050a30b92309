-- The place in its queue's index of a job that is open again (a retry
-- reopened it while a sweep forgot it): {queue key, score, version}, or
-- {} for a finished job or one without work to lease.
return queue_place()
