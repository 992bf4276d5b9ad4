-- The royalty ledger (PostgreSQL): one row per attributed output and one per contributor's
-- share of it, append-only; and the licence revocations that attributions must honour.
-- Applied by deploy/stack.sh as the database owner on every `up` (idempotent). Roles:
--   fleet_ledger_writer  workers: record attributions, read revocations
--   fleet_ledger_reader  fleetctl and the API: reports
--   fleet_ledger_admin   the operator (fleetctl licence revoke): revocations and reports

CREATE TABLE IF NOT EXISTS attribution (
    -- The output image's S3 key: one attribution per output, whoever writes it and however
    -- often its task is redone.
    output_key   text PRIMARY KEY,
    tenant       text NOT NULL,
    job          text NOT NULL,
    -- The input key the output was made from.
    item         text NOT NULL,
    -- Model whose training set the output is attributed to (`name@version`).
    model        text NOT NULL,
    -- S3 key of the attribution record (top-k samples, similarities, shares).
    record_key   text NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS attribution_recorded_at ON attribution (recorded_at);
CREATE INDEX IF NOT EXISTS attribution_tenant_job ON attribution (tenant, job);

CREATE TABLE IF NOT EXISTS share (
    output_key   text NOT NULL REFERENCES attribution (output_key),
    contributor  text NOT NULL,
    share        double precision NOT NULL CHECK (share > 0 AND share <= 1),
    PRIMARY KEY (output_key, contributor)
);
CREATE INDEX IF NOT EXISTS share_contributor ON share (contributor);

-- A contributor's withdrawal of the licence on one image (`image` set) or on everything
-- they contributed (`image` null). Attributions made after `revoked_at` never credit it.
CREATE TABLE IF NOT EXISTS revocation (
    id           bigserial PRIMARY KEY,
    contributor  text NOT NULL,
    image        text,
    reason       text NOT NULL,
    revoked_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS revocation_contributor ON revocation (contributor);

-- Append-only: rows are never changed or removed, whoever asks.
CREATE OR REPLACE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the royalty ledger is append-only: % on % refused', TG_OP, TG_TABLE_NAME;
END $$;
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['attribution', 'share', 'revocation'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = t || '_append_only') THEN
            EXECUTE format('CREATE TRIGGER %I BEFORE UPDATE OR DELETE ON %I
                            FOR EACH ROW EXECUTE FUNCTION ledger_append_only()', t || '_append_only', t);
            EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %I
                            FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only()', t || '_no_truncate', t);
        END IF;
    END LOOP;
END $$;

REVOKE ALL ON attribution, share, revocation FROM PUBLIC;
GRANT SELECT, INSERT ON attribution, share TO fleet_ledger_writer;
GRANT SELECT ON revocation TO fleet_ledger_writer;
GRANT SELECT ON attribution, share, revocation TO fleet_ledger_reader;
GRANT SELECT ON attribution, share TO fleet_ledger_admin;
GRANT SELECT, INSERT ON revocation TO fleet_ledger_admin;
GRANT USAGE ON SEQUENCE revocation_id_seq TO fleet_ledger_admin;
