-- Two marks session 36 packed into existing columns (to spare a migration) get columns of their
-- own, and the rows written in the packed forms are converted.
--
-- segments.receipt_inferred_from: the seq whose receipt settled this part (smscs[].receipts:
-- one_per_message; NULL when the part had an outcome of its own). It was a suffix of the part's
-- error_code ("UNDELIV:001;INFERRED_FROM_PART_3", or "INFERRED_FROM_PART_3" alone), which every
-- reader of error_code then had to strip: the suffix moves here and error_code keeps only the
-- receipt's own error.
ALTER TABLE segments ADD COLUMN receipt_inferred_from INTEGER;
UPDATE segments SET
    receipt_inferred_from = substring(error_code from 'INFERRED_FROM_PART_([0-9]+)$')::integer,
    error_code = NULLIF(substring(error_code from '^(.*);INFERRED_FROM_PART_[0-9]+$'), '')
WHERE error_code ~ '(^|;)INFERRED_FROM_PART_[0-9]+$';

-- mo_parts.set_no: which of the long MOs kept under one concatenation reference a part belongs
-- to (bridge.domain.mo_sets). It was kept in ref above the 16-bit reference (ref + set * 65536);
-- it is now part of the key. The old key goes first: two sets' parts of one seq share it once
-- their refs are the reference alone.
ALTER TABLE mo_parts ADD COLUMN set_no INTEGER NOT NULL DEFAULT 0;
ALTER TABLE mo_parts DROP CONSTRAINT mo_parts_pkey;
UPDATE mo_parts SET set_no = ref / 65536, ref = ref % 65536 WHERE ref >= 65536;
ALTER TABLE mo_parts ADD PRIMARY KEY (smsc, source, destination, ref, set_no, seq);

-- mo_parts.lang_locking, lang_single: the national language tables the part's UDH named (TS
-- 23.040 IEs 0x25 and 0x24; bridge.text.national), 0 for the default ones, as parts kept before.
ALTER TABLE mo_parts ADD COLUMN lang_locking INTEGER NOT NULL DEFAULT 0;
ALTER TABLE mo_parts ADD COLUMN lang_single INTEGER NOT NULL DEFAULT 0;
