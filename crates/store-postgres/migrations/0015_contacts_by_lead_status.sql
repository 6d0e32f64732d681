-- Contacts of one lead status in id order: paging through them (a broadcast to a lead status,
-- `GET /v1/contacts?lead_status=`) is then one range of the index per page, whatever the
-- planner's statistics say about how common the status is.
DROP INDEX contacts_by_lead_status;
CREATE INDEX contacts_by_lead_status ON contacts (org_id, lead_status, id);
