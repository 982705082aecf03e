-- Finalizing picks the next draft by (finalize_after, id): with the index on
-- finalize_after alone, drafts sharing one time (a close's, all at once) were read and
-- sorted whole for every pick.
drop index invoices_drafts;
create index invoices_drafts on invoices (finalize_after, id) where status = 'draft';
