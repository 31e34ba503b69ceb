-- Two marks session 36 packed into existing columns (to spare a migration) get columns of their
-- own, and the rows written in the packed forms are converted.
--
-- segments.receipt_inferred_from: the seq whose receipt settled this part (smscs[].receipts:
-- one_per_message; NULL when the part had an outcome of its own). It was a suffix of the part's
-- error_code ("UNDELIV:001;INFERRED_FROM_PART_3", or "INFERRED_FROM_PART_3" alone), which every
-- reader of error_code then had to strip: the suffix moves here and error_code keeps only the
-- receipt's own error. (char(59) is ";": the migration runner splits statements on it.)
ALTER TABLE segments ADD COLUMN receipt_inferred_from INTEGER;
UPDATE segments SET
    receipt_inferred_from = CAST(
        substr(error_code, instr(error_code, 'INFERRED_FROM_PART_') + 19) AS INTEGER),
    error_code = CASE WHEN instr(error_code, 'INFERRED_FROM_PART_') > 2
        THEN substr(error_code, 1, instr(error_code, 'INFERRED_FROM_PART_') - 2) END
WHERE error_code GLOB '*INFERRED_FROM_PART_[0-9]*'
  AND ltrim(substr(error_code, instr(error_code, 'INFERRED_FROM_PART_') + 19), '0123456789') = ''
  AND (instr(error_code, 'INFERRED_FROM_PART_') = 1
       OR substr(error_code, instr(error_code, 'INFERRED_FROM_PART_') - 1, 1) = char(59));

-- mo_parts.set_no: which of the long MOs kept under one concatenation reference a part belongs
-- to (bridge.domain.mo_sets). It was kept in ref above the 16-bit reference (ref + set * 65536);
-- it is now part of the key, so the table is rebuilt (SQLite cannot change a primary key).
-- mo_parts.lang_locking, lang_single: the national language tables the part's UDH named (TS
-- 23.040 IEs 0x25 and 0x24; bridge.text.national), 0 for the default ones, as parts kept before.
CREATE TABLE mo_parts_new (
    smsc        TEXT NOT NULL,
    source      TEXT NOT NULL,
    destination TEXT NOT NULL,
    ref         INTEGER NOT NULL,
    total       INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    data_coding INTEGER NOT NULL,
    payload     BLOB NOT NULL,
    received_at INTEGER NOT NULL,
    source_ton  INTEGER,
    set_no      INTEGER NOT NULL DEFAULT 0,
    lang_locking INTEGER NOT NULL DEFAULT 0,
    lang_single  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (smsc, source, destination, ref, set_no, seq)
) WITHOUT ROWID;
INSERT INTO mo_parts_new (smsc, source, destination, ref, total, seq, data_coding, payload,
                          received_at, source_ton, set_no)
    SELECT smsc, source, destination, ref % 65536, total, seq, data_coding, payload, received_at,
           source_ton, ref / 65536
    FROM mo_parts;
DROP TABLE mo_parts;
ALTER TABLE mo_parts_new RENAME TO mo_parts;
