"""Governance as code: least-privilege SQL for every warehouse, generated from ONE declaration.

``DECLARATION`` says who may do what with the published tables (``trips``, ``trips_quarantine``,
``region_daily``) and the run ledger (``runs``):

- ``tripflow_etl_writer`` creates its per-run staging tables (in ``<schema>_staging`` on Redshift
  and PostgreSQL, as ``tasks/warehouses/redshift.py`` does), replaces a day in the published tables
  (INSERT, DELETE: no UPDATE, no DDL on them) and appends to the ledger (never rewrites it). It
  reads the published tables whole: staging tables are created ``LIKE`` the published ones, which
  needs table-level SELECT, and the writer is the component that hashes raw PII in the first place,
  so reading the hashes back gives it nothing new.
- ``tripflow_analyst`` reads every published table except the PII columns.
- ``tripflow_analyst_us_east`` is the analyst limited by a row policy to region ``us-east``.
- ``tripflow_dashboard`` reads ``region_daily`` and nothing else.

PII columns: ``rider_id``, ``rider_email_hash`` and ``driver_id``. The e-mail is already replaced
by a keyed hash before anything is written, but a keyed hash and the two ids are still stable
pseudonymous identifiers of people (they link every trip of one rider or driver into a movement
profile): personal data, so readers never get them.

``grants_sql(target, declaration, …)`` turns the declaration into statements for ``redshift``,
``postgres`` (the Redshift statements in PostgreSQL's dialect: the tests run them on a real
server), ``bigquery`` and ``snowflake``. Every generator is pure (no connection); every name from
configuration is validated (identifiers by ``tasks.warehouses.base.identifier``, BigQuery members
and projects by their own grammar, regions as plain slugs) and a bad one is a ``UsageError``.

On Redshift, PostgreSQL and Snowflake each declared role's table and schema privileges are first
revoked and then granted again, so re-applying converges on the declaration (a privilege granted by
hand is taken away). BigQuery's GRANTs only add (a REVOKE there must name what was granted).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Final, Literal

from tasks.contract import CLEAN_SCHEMA, QUARANTINE_SCHEMA, REGION_DAILY_SCHEMA
from tasks.errors import UsageError
from tasks.warehouses.base import LedgerRow, identifier

Target = Literal["redshift", "postgres", "bigquery", "snowflake"]
TARGETS: Final[tuple[Target, ...]] = ("redshift", "postgres", "bigquery", "snowflake")

#: How much of a table a role may read: every column, every column but the PII ones, or only
#: the named columns.
ReadScope = Literal["all", "non_pii"] | tuple[str, ...]


@dataclass(frozen=True)
class TableGrant:
    """One role's access to one table: what it reads, and whether it replaces days (publish)."""

    table: str
    read: ReadScope | None = None
    #: ``replace``: INSERT and DELETE (publishing deletes the day and inserts it again);
    #: ``append``: INSERT only (the run ledger is never rewritten).
    write: Literal["replace", "append"] | None = None


@dataclass(frozen=True)
class Role:
    name: str
    purpose: str
    tables: tuple[TableGrant, ...]
    #: CREATE on the staging schema: the role creates (and so owns) its per-run staging tables.
    creates_staging_tables: bool = False


@dataclass(frozen=True)
class RowPolicy:
    """Rows of ``tables`` a role sees: only those whose ``region`` is one of ``regions``."""

    name: str
    role: str
    regions: tuple[str, ...]
    tables: tuple[str, ...]
    column: str = "region"


@dataclass(frozen=True)
class Declaration:
    #: Published tables and their columns, in table order (as ``tasks/warehouses/duckdb.py``).
    tables: tuple[tuple[str, tuple[str, ...]], ...]
    pii_columns: tuple[str, ...]
    roles: tuple[Role, ...]
    row_policies: tuple[RowPolicy, ...] = ()
    #: The role that owns the tables and applies these grants; the only one Snowflake unmasks
    #: PII for (on Redshift and PostgreSQL the owner reads everything anyway).
    owner_role: str = "tripflow_owner"
    #: Name of the "every row" policy given to the roles a row policy does not restrict (row
    #: security denies everything to a role without a policy once it is on).
    all_rows_policy: str = "tripflow_all_rows"

    def columns(self, table: str) -> tuple[str, ...]:
        for name, columns in self.tables:
            if name == table:
                return columns
        raise UsageError(f"governance: no table {table!r} in the declaration")

    def readable_columns(self, grant: TableGrant) -> tuple[str, ...] | None:
        """The columns ``grant`` reads (None: none; every column is spelled out otherwise)."""
        columns = self.columns(grant.table)
        if grant.read is None:
            return None
        if grant.read == "all":
            return columns
        if grant.read == "non_pii":
            return tuple(c for c in columns if c not in self.pii_columns)
        unknown = [c for c in grant.read if c not in columns]
        if unknown:
            raise UsageError(f"governance: {grant.table} has no column(s) {', '.join(unknown)}")
        return tuple(grant.read)

    def role(self, name: str) -> Role:
        for role in self.roles:
            if role.name == name:
                return role
        raise UsageError(f"governance: no role {name!r} in the declaration")


#: The published tables' columns, in their order: the contract's staged schemas (which every
#: warehouse loads as they are) and the run ledger's fields.
TRIPS_COLUMNS: Final = tuple(CLEAN_SCHEMA)
QUARANTINE_COLUMNS: Final = tuple(QUARANTINE_SCHEMA)
REGION_DAILY_COLUMNS: Final = tuple(REGION_DAILY_SCHEMA)
RUNS_COLUMNS: Final = tuple(f.name for f in fields(LedgerRow))

PUBLISHED: Final = ("trips", "trips_quarantine", "region_daily")
_ANALYST_TABLES: Final = (
    TableGrant("trips", read="non_pii"),
    TableGrant("trips_quarantine", read="non_pii"),
    TableGrant("region_daily", read="all"),
    TableGrant("runs", read="all"),
)

DECLARATION: Final = Declaration(
    tables=(
        ("trips", TRIPS_COLUMNS),
        ("trips_quarantine", QUARANTINE_COLUMNS),
        ("region_daily", REGION_DAILY_COLUMNS),
        ("runs", RUNS_COLUMNS),
    ),
    pii_columns=("rider_id", "rider_email_hash", "driver_id"),
    roles=(
        Role(
            "tripflow_etl_writer",
            "Loads its per-run staging tables and publishes a day (no UPDATE, no DDL, append-only "
            "ledger).",
            tables=(
                *(TableGrant(t, read="all", write="replace") for t in PUBLISHED),
                TableGrant("runs", read="all", write="append"),
            ),
            creates_staging_tables=True,
        ),
        Role("tripflow_analyst", "Reads every published table without PII.", _ANALYST_TABLES),
        Role(
            "tripflow_analyst_us_east",
            "The analyst's access, limited to the us-east region's rows.",
            _ANALYST_TABLES,
        ),
        Role(
            "tripflow_dashboard",
            "Reads the per-region daily aggregate only.",
            (TableGrant("region_daily", read="all"),),
        ),
    ),
    row_policies=(
        RowPolicy(
            "trip_region_policy",
            role="tripflow_analyst_us_east",
            regions=("us-east",),
            tables=PUBLISHED,
        ),
    ),
)

# --- Validation of configuration -----------------------------------------------------------------

_REGION: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_GCP_PROJECT: Final = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_BQ_MEMBER: Final = re.compile(
    r"^(?:(?:user|serviceAccount|group):[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"
    r"|domain:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)$"
)


def user_name(name: str) -> str:
    """A Redshift, PostgreSQL or Snowflake user a role is granted to (a plain identifier)."""
    try:
        return identifier(name)
    except UsageError:
        raise UsageError(f"governance: not a safe user name for a principal: {name!r}") from None


def region_literal(region: str) -> str:
    """A region as a SQL literal (regions are slugs: nothing to escape, nothing to inject)."""
    if not _REGION.match(region):
        raise UsageError(f"governance: not a region name: {region!r}")
    return f"'{region}'"


def bigquery_member(member: str) -> str:
    """A BigQuery IAM member (``user:…``, ``serviceAccount:…``, ``group:…``, ``domain:…``)."""
    if not _BQ_MEMBER.match(member):
        raise UsageError(
            f"governance: not a BigQuery member: {member!r} "
            "(expected user:EMAIL, serviceAccount:EMAIL, group:EMAIL or domain:DOMAIN)"
        )
    return f'"{member}"'


def gcp_project(project: str) -> str:
    if not _GCP_PROJECT.match(project):
        raise UsageError(f"governance: not a Google Cloud project id: {project!r}")
    return project


def check(declaration: Declaration) -> None:
    """Refuse a declaration that names unknown tables, columns or roles, or unsafe names."""
    for table, columns in declaration.tables:
        identifier(table)
        for column in columns:
            identifier(column)
    for column in declaration.pii_columns:
        identifier(column)
    identifier(declaration.owner_role)
    identifier(declaration.all_rows_policy)
    for role in declaration.roles:
        identifier(role.name)
        for grant in role.tables:
            declaration.readable_columns(grant)
    for policy in declaration.row_policies:
        identifier(policy.name)
        identifier(policy.column)
        declaration.role(policy.role)
        if not policy.regions:
            raise UsageError(f"governance: row policy {policy.name} names no region")
        for region in policy.regions:
            region_literal(region)
        for table in policy.tables:
            if policy.column not in declaration.columns(table):
                raise UsageError(f"governance: {table} has no column {policy.column}")


def principals_for(
    declaration: Declaration, principals: Mapping[str, Sequence[str]]
) -> dict[str, tuple[str, ...]]:
    """Every declared role's principals (users, service accounts) from configuration."""
    unknown = sorted(set(principals) - {r.name for r in declaration.roles})
    if unknown:
        raise UsageError(f"governance: principals for undeclared role(s): {', '.join(unknown)}")
    return {r.name: tuple(principals.get(r.name, ())) for r in declaration.roles}


def parse_principals(items: Iterable[str]) -> dict[str, list[str]]:
    """``ROLE=PRINCIPAL`` items (repeatable) as a mapping of role to principals."""
    mapping: dict[str, list[str]] = {}
    for item in items:
        role, sep, principal = item.partition("=")
        if not sep or not role or not principal:
            raise UsageError(f"governance: expected ROLE=PRINCIPAL, got {item!r}")
        mapping.setdefault(role, []).append(principal)
    return mapping


# --- The model every dialect renders -------------------------------------------------------------


@dataclass(frozen=True)
class _TableRows:
    """Who reads which rows of a table under row security."""

    table: str
    scoped: tuple[RowPolicy, ...]
    #: Roles with access to the table that no row policy restricts.
    unrestricted: tuple[str, ...] = field(default=())


def _row_security(declaration: Declaration) -> list[_TableRows]:
    tables: list[_TableRows] = []
    for table, _ in declaration.tables:
        scoped = tuple(p for p in declaration.row_policies if table in p.tables)
        if not scoped:
            continue
        scoped_roles = {p.role for p in scoped}
        unrestricted = tuple(
            r.name
            for r in declaration.roles
            if r.name not in scoped_roles and any(g.table == table for g in r.tables)
        )
        tables.append(_TableRows(table, scoped, unrestricted))
    return tables


def _in_list(policy: RowPolicy, column: str | None = None) -> str:
    """``region IN ('us-east', …)`` (``column`` spells the column another way, e.g. upper case)."""
    regions = ", ".join(region_literal(r) for r in policy.regions)
    return f"{identifier(column or policy.column)} IN ({regions})"


# --- Redshift and PostgreSQL ---------------------------------------------------------------------
# The same statements, except the grantee: Redshift names a role ``ROLE name`` (a bare name is a
# user), PostgreSQL has one namespace for both; and row-level security, which differs in syntax.

RS_CREATE_ROLE: Final = "CREATE ROLE {role};"
RS_REVOKE_TABLES: Final = "REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {grantee};"
RS_REVOKE_SCHEMA: Final = "REVOKE ALL ON SCHEMA {schema} FROM {grantee};"
RS_GRANT_USAGE: Final = "GRANT USAGE ON SCHEMA {schema} TO {grantee};"
RS_GRANT_CREATE: Final = "GRANT USAGE, CREATE ON SCHEMA {schema} TO {grantee};"
RS_GRANT_SELECT: Final = "GRANT SELECT ON TABLE {schema}.{table} TO {grantee};"
RS_GRANT_SELECT_COLUMNS: Final = "GRANT SELECT ({columns}) ON TABLE {schema}.{table} TO {grantee};"
RS_GRANT_REPLACE: Final = "GRANT INSERT, DELETE ON TABLE {schema}.{table} TO {grantee};"
RS_GRANT_APPEND: Final = "GRANT INSERT ON TABLE {schema}.{table} TO {grantee};"
RS_GRANT_ROLE_TO_USER: Final = "GRANT ROLE {role} TO {user};"
PG_GRANT_ROLE_TO_USER: Final = "GRANT {role} TO {user};"

#: Redshift RLS: policies are database objects, attached to tables per role; a role without an
#: attached policy sees no rows once the table's row-level security is on.
RS_DROP_RLS_POLICY: Final = "DROP RLS POLICY IF EXISTS {policy} CASCADE;"
#: The policy's column type is the published tables' ``region`` type in
#: ``tasks/warehouses/redshift.py`` (a test holds them equal).
RS_REGION_TYPE: Final = "VARCHAR(256)"
RS_CREATE_RLS_POLICY: Final = (
    "CREATE RLS POLICY {policy} WITH ({column} " + RS_REGION_TYPE + ") USING ({predicate});"
)
RS_CREATE_ALL_ROWS_POLICY: Final = "CREATE RLS POLICY {policy} USING (TRUE);"
RS_ATTACH_RLS_POLICY: Final = "ATTACH RLS POLICY {policy} ON {schema}.{table} TO {grantees};"
RS_RLS_ON: Final = "ALTER TABLE {schema}.{table} ROW LEVEL SECURITY ON;"

#: PostgreSQL row-level security: policies belong to a table; permissive policies are OR-ed.
PG_DROP_POLICY: Final = "DROP POLICY IF EXISTS {policy} ON {schema}.{table};"
PG_CREATE_POLICY: Final = (
    "CREATE POLICY {policy} ON {schema}.{table} FOR SELECT TO {roles} USING ({predicate});"
)
PG_CREATE_ALL_ROWS_POLICY: Final = (
    "CREATE POLICY {policy} ON {schema}.{table} FOR ALL TO {roles} USING (TRUE) WITH CHECK (TRUE);"
)
PG_RLS_ON: Final = "ALTER TABLE {schema}.{table} ENABLE ROW LEVEL SECURITY;"


def _redshift_like(
    declaration: Declaration,
    *,
    schema: str,
    staging_schema: str,
    principals: Mapping[str, Sequence[str]],
    dialect: Literal["redshift", "postgres"],
) -> list[str]:
    def grantee(role: str) -> str:
        return f"ROLE {role}" if dialect == "redshift" else role

    role_to_user = RS_GRANT_ROLE_TO_USER if dialect == "redshift" else PG_GRANT_ROLE_TO_USER
    users = principals_for(declaration, principals)
    sql: list[str] = [RS_CREATE_ROLE.format(role=r.name) for r in declaration.roles]
    schemas = dict.fromkeys((schema, staging_schema))
    for role in declaration.roles:
        g = grantee(role.name)
        for s in schemas:
            sql.append(RS_REVOKE_TABLES.format(schema=s, grantee=g))
            sql.append(RS_REVOKE_SCHEMA.format(schema=s, grantee=g))
        if role.creates_staging_tables:
            sql.append(RS_GRANT_CREATE.format(schema=staging_schema, grantee=g))
        if not (role.creates_staging_tables and staging_schema == schema):
            sql.append(RS_GRANT_USAGE.format(schema=schema, grantee=g))
        for grant in role.tables:
            table = identifier(grant.table)
            columns = declaration.readable_columns(grant)
            if columns is not None:
                if columns == declaration.columns(grant.table):
                    sql.append(RS_GRANT_SELECT.format(schema=schema, table=table, grantee=g))
                else:
                    sql.append(
                        RS_GRANT_SELECT_COLUMNS.format(
                            columns=", ".join(columns), schema=schema, table=table, grantee=g
                        )
                    )
            if grant.write is not None:
                write = RS_GRANT_REPLACE if grant.write == "replace" else RS_GRANT_APPEND
                sql.append(write.format(schema=schema, table=table, grantee=g))
        for user in users[role.name]:
            sql.append(role_to_user.format(role=role.name, user=user_name(user)))
    rows = _row_security(declaration)
    if dialect == "redshift":
        policies = {p.name: p for t in rows for p in t.scoped}
        for policy in policies.values():
            sql.append(RS_DROP_RLS_POLICY.format(policy=policy.name))
            sql.append(
                RS_CREATE_RLS_POLICY.format(
                    policy=policy.name, column=policy.column, predicate=_in_list(policy)
                )
            )
        if any(t.unrestricted for t in rows):
            sql.append(RS_DROP_RLS_POLICY.format(policy=declaration.all_rows_policy))
            sql.append(RS_CREATE_ALL_ROWS_POLICY.format(policy=declaration.all_rows_policy))
        for t in rows:
            for policy in t.scoped:
                sql.append(
                    RS_ATTACH_RLS_POLICY.format(
                        policy=policy.name,
                        schema=schema,
                        table=t.table,
                        grantees=grantee(policy.role),
                    )
                )
            if t.unrestricted:
                sql.append(
                    RS_ATTACH_RLS_POLICY.format(
                        policy=declaration.all_rows_policy,
                        schema=schema,
                        table=t.table,
                        grantees=", ".join(grantee(r) for r in t.unrestricted),
                    )
                )
            sql.append(RS_RLS_ON.format(schema=schema, table=t.table))
    else:
        for t in rows:
            for policy in t.scoped:
                sql.append(PG_DROP_POLICY.format(policy=policy.name, schema=schema, table=t.table))
                sql.append(
                    PG_CREATE_POLICY.format(
                        policy=policy.name,
                        schema=schema,
                        table=t.table,
                        roles=policy.role,
                        predicate=_in_list(policy),
                    )
                )
            if t.unrestricted:
                policy_name = declaration.all_rows_policy
                sql.append(PG_DROP_POLICY.format(policy=policy_name, schema=schema, table=t.table))
                sql.append(
                    PG_CREATE_ALL_ROWS_POLICY.format(
                        policy=policy_name,
                        schema=schema,
                        table=t.table,
                        roles=", ".join(t.unrestricted),
                    )
                )
            sql.append(PG_RLS_ON.format(schema=schema, table=t.table))
    return sql


# --- BigQuery ------------------------------------------------------------------------------------
# Table and dataset IAM as BigQuery DCL (GRANT `roles/…` ON SCHEMA|TABLE|VIEW … TO "member").
# PII: authorized views without the PII columns in a dataset of their own (``<dataset>_analyst``);
# readers get that dataset and never the source tables that hold PII. The views must then be
# authorized on the source dataset (an access entry: API or ``bq``, not SQL; see ``notes``).
# Project-level roles (``roles/bigquery.jobUser``) are IAM bindings, not DCL: also in ``notes``.

BQ_GRANT_DATASET: Final = "GRANT `{role}` ON SCHEMA `{project}.{dataset}` TO {members};"
BQ_GRANT_TABLE: Final = "GRANT `{role}` ON TABLE `{project}.{dataset}.{table}` TO {members};"
BQ_GRANT_VIEW: Final = "GRANT `{role}` ON VIEW `{project}.{dataset}.{table}` TO {members};"
BQ_CREATE_VIEW_DATASET: Final = (
    "CREATE SCHEMA IF NOT EXISTS `{project}.{dataset}` OPTIONS (location = '{location}');"
)
BQ_CREATE_VIEW: Final = (
    "CREATE OR REPLACE VIEW `{project}.{view_dataset}.{table}` AS "
    "SELECT {columns} FROM `{project}.{dataset}.{table}`;"
)
BQ_ROW_ACCESS_POLICY: Final = (
    "CREATE OR REPLACE ROW ACCESS POLICY {policy} ON `{project}.{dataset}.{table}` "
    "GRANT TO ({members}) FILTER USING ({predicate});"
)
BQ_EDITOR: Final = "roles/bigquery.dataEditor"
BQ_VIEWER: Final = "roles/bigquery.dataViewer"
_LOCATION: Final = re.compile(r"^[A-Za-z0-9-]{2,32}$")


def _bigquery(
    declaration: Declaration,
    *,
    schema: str,
    project: str | None,
    location: str,
    principals: Mapping[str, Sequence[str]],
) -> list[str]:
    if project is None:
        raise UsageError("governance: BigQuery needs --project")
    project = gcp_project(project)
    if not _LOCATION.match(location):
        raise UsageError(f"governance: not a BigQuery location: {location!r}")
    view_dataset = identifier(f"{schema}_analyst")
    members = {
        role: tuple(bigquery_member(p) for p in ps)
        for role, ps in principals_for(declaration, principals).items()
    }

    sql: list[str] = []
    views: dict[str, tuple[str, ...]] = {}
    for role in declaration.roles:
        for grant in role.tables:
            columns = declaration.readable_columns(grant)
            partial = columns is not None and columns != declaration.columns(grant.table)
            if partial and grant.write is None and columns is not None:
                views.setdefault(grant.table, columns)
                if views[grant.table] != columns:
                    raise UsageError(
                        f"governance: BigQuery has one reader view per table: {grant.table} is "
                        "declared with two column sets"
                    )
    if views:
        sql.append(
            BQ_CREATE_VIEW_DATASET.format(project=project, dataset=view_dataset, location=location)
        )
        for table, columns in views.items():
            sql.append(
                BQ_CREATE_VIEW.format(
                    project=project,
                    view_dataset=view_dataset,
                    dataset=schema,
                    table=table,
                    columns=", ".join(columns),
                )
            )
    for role in declaration.roles:
        who = members[role.name]
        if not who:
            continue
        to = ", ".join(who)
        if role.creates_staging_tables or any(g.write is not None for g in role.tables):
            # Creating staging tables needs the dataset; dataEditor includes reading it back.
            sql.append(
                BQ_GRANT_DATASET.format(role=BQ_EDITOR, project=project, dataset=schema, members=to)
            )
            continue
        for grant in role.tables:
            columns = declaration.readable_columns(grant)
            if columns is None:
                continue
            through_view = grant.table in views and columns == views[grant.table]
            sql.append(
                (BQ_GRANT_VIEW if through_view else BQ_GRANT_TABLE).format(
                    role=BQ_VIEWER,
                    project=project,
                    dataset=view_dataset if through_view else schema,
                    table=grant.table,
                    members=to,
                )
            )
    for t in _row_security(declaration):
        for policy in t.scoped:
            if members[policy.role]:
                sql.append(
                    BQ_ROW_ACCESS_POLICY.format(
                        policy=policy.name,
                        project=project,
                        dataset=schema,
                        table=t.table,
                        members=", ".join(members[policy.role]),
                        predicate=_in_list(policy),
                    )
                )
        everyone = [m for r in t.unrestricted for m in members[r]]
        if everyone:
            sql.append(
                BQ_ROW_ACCESS_POLICY.format(
                    policy=declaration.all_rows_policy,
                    project=project,
                    dataset=schema,
                    table=t.table,
                    members=", ".join(dict.fromkeys(everyone)),
                    predicate="TRUE",
                )
            )
    return sql


# --- Snowflake -----------------------------------------------------------------------------------
# No column-level GRANT: readers get SELECT on the table and a masking policy shows the PII columns
# as '***' to every role but the owner. One row access policy per table (Snowflake allows one)
# restricts the region-scoped roles; other roles pass it (their GRANTs are the gate). Policies are
# created once and their bodies set by ALTER … SET BODY, because CREATE OR REPLACE fails for a
# policy attached to a column or table: re-applying updates the bodies in place.

SF_CREATE_ROLE: Final = "CREATE ROLE IF NOT EXISTS {role};"
SF_GRANT_DATABASE: Final = "GRANT USAGE ON DATABASE {database} TO ROLE {role};"
SF_GRANT_WAREHOUSE: Final = "GRANT USAGE ON WAREHOUSE {warehouse} TO ROLE {role};"
SF_GRANT_SCHEMA: Final = "GRANT USAGE ON SCHEMA {database}.{schema} TO ROLE {role};"
SF_GRANT_CREATE: Final = "GRANT CREATE TABLE ON SCHEMA {database}.{schema} TO ROLE {role};"
SF_GRANT_STAGE: Final = "GRANT USAGE ON STAGE {database}.{schema}.{stage} TO ROLE {role};"
SF_REVOKE: Final = "REVOKE ALL ON ALL TABLES IN SCHEMA {database}.{schema} FROM ROLE {role};"
SF_GRANT_SELECT: Final = "GRANT SELECT ON TABLE {database}.{schema}.{table} TO ROLE {role};"
SF_GRANT_REPLACE: Final = (
    "GRANT INSERT, DELETE ON TABLE {database}.{schema}.{table} TO ROLE {role};"
)
SF_GRANT_APPEND: Final = "GRANT INSERT ON TABLE {database}.{schema}.{table} TO ROLE {role};"
SF_GRANT_ROLE_TO_USER: Final = "GRANT ROLE {role} TO USER {user};"
SF_PII_MASK_BODY: Final = "CASE WHEN CURRENT_ROLE() IN ({roles}) THEN val ELSE '***' END"
SF_CREATE_MASKING_POLICY: Final = (
    "CREATE MASKING POLICY IF NOT EXISTS {database}.{schema}.PII_MASK AS (val STRING) "
    "RETURNS STRING -> {body};"
)
SF_SET_MASKING_BODY: Final = "ALTER MASKING POLICY {database}.{schema}.PII_MASK SET BODY -> {body};"
SF_SET_MASKING: Final = (
    "ALTER TABLE {database}.{schema}.{table} MODIFY COLUMN {column} "
    "SET MASKING POLICY {database}.{schema}.PII_MASK FORCE;"
)
SF_ROW_BODY: Final = "CASE {cases} ELSE TRUE END"
SF_ROW_CASE: Final = "WHEN CURRENT_ROLE() = '{role}' THEN {predicate}"
SF_CREATE_ROW_POLICY: Final = (
    "CREATE ROW ACCESS POLICY IF NOT EXISTS {database}.{schema}.{policy} AS ({column} VARCHAR) "
    "RETURNS BOOLEAN -> {body};"
)
SF_SET_ROW_BODY: Final = "ALTER ROW ACCESS POLICY {database}.{schema}.{policy} SET BODY -> {body};"
#: Fails with "already attached" when re-applied (the body above is what changes): harmless.
SF_ADD_ROW_POLICY: Final = (
    "ALTER TABLE {database}.{schema}.{table} "
    "ADD ROW ACCESS POLICY {database}.{schema}.{policy} ON ({column});"
)


def _snowflake(
    declaration: Declaration,
    *,
    schema: str,
    database: str | None,
    warehouse: str | None,
    stage: str | None,
    principals: Mapping[str, Sequence[str]],
) -> list[str]:
    if database is None:
        raise UsageError("governance: Snowflake needs --database")
    where = {"database": identifier(database).upper(), "schema": schema.upper()}
    users = principals_for(declaration, principals)
    sql: list[str] = []
    for role in declaration.roles:
        name = role.name.upper()
        sql.append(SF_CREATE_ROLE.format(role=name))
        sql.append(SF_REVOKE.format(**where, role=name))
        sql.append(SF_GRANT_DATABASE.format(database=where["database"], role=name))
        if warehouse is not None:
            sql.append(
                SF_GRANT_WAREHOUSE.format(warehouse=identifier(warehouse).upper(), role=name)
            )
        sql.append(SF_GRANT_SCHEMA.format(**where, role=name))
        if role.creates_staging_tables:
            sql.append(SF_GRANT_CREATE.format(**where, role=name))
            if stage is not None:
                sql.append(
                    SF_GRANT_STAGE.format(**where, stage=identifier(stage).upper(), role=name)
                )
        for grant in role.tables:
            table = identifier(grant.table).upper()
            if grant.read is not None:
                sql.append(SF_GRANT_SELECT.format(**where, table=table, role=name))
            if grant.write is not None:
                write = SF_GRANT_REPLACE if grant.write == "replace" else SF_GRANT_APPEND
                sql.append(write.format(**where, table=table, role=name))
        for user in users[role.name]:
            sql.append(SF_GRANT_ROLE_TO_USER.format(role=name, user=user_name(user).upper()))
    pii = [
        (table, column)
        for table, columns in declaration.tables
        for column in columns
        if column in declaration.pii_columns
    ]
    if pii:
        body = SF_PII_MASK_BODY.format(roles=f"'{declaration.owner_role.upper()}'")
        sql.append(SF_CREATE_MASKING_POLICY.format(**where, body=body))
        sql.append(SF_SET_MASKING_BODY.format(**where, body=body))
        for table, column in pii:
            sql.append(SF_SET_MASKING.format(**where, table=table.upper(), column=column.upper()))
    for t in _row_security(declaration):
        policy = f"{t.table}_row_policy".upper()
        columns = {p.column for p in t.scoped}
        if len(columns) != 1:
            raise UsageError(f"governance: Snowflake: {t.table}'s row policies use two columns")
        column = columns.pop().upper()
        body = SF_ROW_BODY.format(
            cases=" ".join(
                SF_ROW_CASE.format(role=p.role.upper(), predicate=_in_list(p, column))
                for p in t.scoped
            )
        )
        sql.append(SF_CREATE_ROW_POLICY.format(**where, policy=policy, column=column, body=body))
        sql.append(SF_SET_ROW_BODY.format(**where, policy=policy, body=body))
        sql.append(
            SF_ADD_ROW_POLICY.format(**where, table=t.table.upper(), policy=policy, column=column)
        )
    return sql


# --- The one entry point -------------------------------------------------------------------------


def grants_sql(
    target: str,
    declaration: Declaration = DECLARATION,
    *,
    schema: str = "analytics",
    staging_schema: str | None = None,
    principals: Mapping[str, Sequence[str]] | None = None,
    project: str | None = None,
    location: str = "US",
    database: str | None = None,
    warehouse: str | None = None,
    stage: str | None = None,
) -> list[str]:
    """The statements that apply ``declaration`` on ``target``, one per item, in order.

    ``schema`` is the dataset (BigQuery) or schema of the published tables; ``staging_schema``
    (Redshift/PostgreSQL) where the ETL writer creates its per-run tables (default:
    ``<schema>_staging``, as the Redshift warehouse does).
    ``principals`` maps a declared role to its users (Redshift, PostgreSQL, Snowflake user names)
    or IAM members (BigQuery ``serviceAccount:…`` etc.).
    """
    check(declaration)
    schema = identifier(schema)
    principals = principals or {}
    if target in ("redshift", "postgres"):
        return _redshift_like(
            declaration,
            schema=schema,
            staging_schema=identifier(staging_schema or f"{schema}_staging"),
            principals=principals,
            dialect="redshift" if target == "redshift" else "postgres",
        )
    if target == "bigquery":
        return _bigquery(
            declaration, schema=schema, project=project, location=location, principals=principals
        )
    if target == "snowflake":
        return _snowflake(
            declaration,
            schema=schema,
            database=database,
            warehouse=warehouse,
            stage=stage,
            principals=principals,
        )
    raise UsageError(f"governance: unknown target {target!r} (one of {', '.join(TARGETS)})")


def notes(
    target: str,
    declaration: Declaration = DECLARATION,
    *,
    schema: str = "analytics",
    project: str | None = None,
    principals: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """What the SQL cannot do on ``target`` and must be done another way (printed, not run)."""
    principals = principals_for(declaration, principals or {})
    missing = [r.name for r in declaration.roles if not principals[r.name]]
    out: list[str] = []
    if target == "bigquery":
        out.append(
            "grant roles/bigquery.jobUser on the project to every member above (project IAM, not "
            f"DCL): gcloud projects add-iam-policy-binding {project or 'PROJECT'} "
            "--member=MEMBER --role=roles/bigquery.jobUser"
        )
        out.append(
            f"authorize the views of {schema}_analyst on dataset {schema} (dataset access "
            "entry: console, API or bq update --source; BigQuery has no SQL for it)"
        )
        if missing:
            out.append(f"no members given for {', '.join(missing)}: nothing granted to them")
    elif missing:
        out.append(f"no users given for {', '.join(missing)}: roles created, granted to nobody")
    if target == "redshift":
        out.append(
            "Redshift combines several RLS policies that apply to one user with AND: a user in "
            "two declared roles sees the rows of the narrower one"
        )
    return out


# --- Applying on PostgreSQL ----------------------------------------------------------------------


@dataclass(frozen=True)
class Applied:
    executed: int
    #: Roles that existed already (their grants were still revoked and re-granted).
    existing_roles: tuple[str, ...]


def apply_postgres(dsn: str, statements: Sequence[str]) -> Applied:
    """Run ``statements`` (``grants_sql("postgres", …)``) in ONE transaction on PostgreSQL.

    Either every statement applies or none does. A ``CREATE ROLE`` for a role that exists is
    skipped (inside a savepoint), so re-applying converges. Failures raise ``InfrastructureError``
    naming the statement (the SQL holds no secret; the DSN never appears in a message).
    """
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg.conninfo import conninfo_to_dict

    from tasks.errors import InfrastructureError

    existing: list[str] = []
    executed = 0
    try:
        conn = psycopg.connect(dsn, autocommit=False)
    except psycopg.Error as exc:
        # libpq names host, port and user, never the password; redact it anyway.
        try:
            password = conninfo_to_dict(dsn).get("password")
        except psycopg.Error:
            password = None
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if password:
            detail = detail.replace(str(password), "***")
        raise InfrastructureError(f"governance: cannot connect to PostgreSQL: {detail}") from None
    # The outer transaction makes the per-role blocks savepoints (alone, the first one would
    # be a transaction of its own and commit).
    with conn, conn.transaction():
        for statement in statements:
            try:
                if statement.startswith("CREATE ROLE "):
                    with conn.transaction():
                        try:
                            conn.execute(statement.encode())
                        except pg_errors.DuplicateObject:
                            existing.append(statement.removeprefix("CREATE ROLE ").rstrip(";"))
                            raise _Skip() from None
                else:
                    conn.execute(statement.encode())
                executed += 1
            except _Skip:
                continue
            except psycopg.Error as exc:
                detail = exc.diag.message_primary or type(exc).__name__
                raise InfrastructureError(
                    f"governance: PostgreSQL refused {statement!r}: {detail} (nothing applied)"
                ) from None
    return Applied(executed=executed, existing_roles=tuple(existing))


class _Skip(Exception):
    """Rolls a savepoint back without failing the transaction."""
