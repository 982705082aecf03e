-- A debt older than the period that no unpaid invoice bills (a void invoice's, a
-- refund's beyond the unspent balance) is billed on the next invoice in full, as the
-- "Balance carried forward" line.

alter table invoices add column carried_amount bigint not null default 0
    check (carried_amount >= 0);
alter table invoices drop constraint invoices_check;
alter table invoices add constraint invoices_money_check
    check (usage_amount + fee_amount + carried_amount = credits_applied + amount_due);

alter table invoice_lines drop constraint invoice_lines_kind_check;
alter table invoice_lines add constraint invoice_lines_kind_check
    check (kind in ('usage', 'fee', 'carried_forward', 'credits_applied'));
