-- The SMSC a claimed message's parts may have gone to in this claim: recorded as its first part
-- leaves (SMSCs with in_flight_on_restart: unknown) or when a part's answer is recorded, cleared
-- by the next claim. A restart marks such a message's unanswered parts unknown instead of
-- resending them; its last SMSC (smsc) cannot tell, being set only by answers, and from an
-- earlier claim.
ALTER TABLE messages ADD COLUMN q_route text;
-- Claims left by the previous release (a crash, or a stop past its grace, before this upgrade)
-- keep the decision that release would have made.
UPDATE messages SET q_route = smsc WHERE q_state = 'claimed';
