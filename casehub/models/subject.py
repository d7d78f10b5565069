"""The child or young person a referral is about."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Date,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    text,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from casehub.db import Base, new_id, utcnow


class Subject(Base):
    __tablename__ = "subjects"
    __table_args__ = (
        Index("ix_subjects_created_at_id", "created_at", "id"),
        Index(
            "ix_subjects_merged_into",
            "merged_into",
            postgresql_where=text("merged_into IS NOT NULL"),
            sqlite_where=text("merged_into IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    given_name: Mapped[str] = mapped_column(String(100))
    family_name: Mapped[str] = mapped_column(String(100))
    aliases: Mapped[list[str]] = mapped_column(JSON, default=list)
    date_of_birth: Mapped[date | None] = mapped_column(Date, index=True)
    estimated_birth_year: Mapped[int | None] = mapped_column(Integer)
    gender: Mapped[str] = mapped_column(String(20), default="unknown")
    identifiers: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    address_line: Mapped[str | None] = mapped_column(String(200))
    address_town: Mapped[str | None] = mapped_column(String(100))
    address_postcode: Mapped[str | None] = mapped_column(String(10))
    created_by_agency: Mapped[str] = mapped_column(ForeignKey("agencies.code"), index=True)
    # Set when this record was merged into another as a duplicate (CONTRACT §11); cleared by
    # an unmerge. The survivor's id: both records are then one child.
    merged_into: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("subjects.id"))
    # Set when retention erased the record (no remaining referral needed it): a tombstone.
    erased_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    version: Mapped[int] = mapped_column(Integer, default=1)

    name_keys: Mapped[list[SubjectNameKey]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True
    )
    identifier_rows: Mapped[list[SubjectIdentifier]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True
    )

    __mapper_args__ = {"version_id_col": version}


class SubjectNameKey(Base):
    """Search keys for a subject's names: each normalised name and its one-deletion variants.

    Two names within one edit of each other always share a key, so typo-tolerant search is an
    indexed equality join that behaves the same on SQLite and PostgreSQL. `whole_word` tells a
    name token from a deletion of one, for query words that must match exactly. The subject's
    `created_at` is copied here so that ix_subject_name_keys_key_order hands out each key's
    subjects in page order: a page of "Smith" reads its first Smiths, not all of them.
    """

    __tablename__ = "subject_name_keys"
    __table_args__ = (
        PrimaryKeyConstraint("subject_id", "key"),
        # whole_word last: filtered in the index, without changing the order of a key's rows.
        Index(
            "ix_subject_name_keys_key_order",
            "key",
            "subject_created_at",
            "subject_id",
            "whole_word",
        ),
        # Matching (CONTRACT §9): a name's keys among children born within a year of a date.
        Index("ix_subject_name_keys_key_birth_year", "key", "birth_year", "subject_id"),
    )

    subject_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("subjects.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(100))
    # The release before migration 0008 writes rows without these two during a rolling upgrade:
    # its rows count as whole words (names.matches still checks them, so they can cost time but
    # never a wrong answer), and on PostgreSQL a trigger of 0008 copies the subject's created_at.
    whole_word: Mapped[bool] = mapped_column(server_default=true())
    subject_created_at: Mapped[datetime]
    # The subject's year of birth (its date of birth's, else its estimated year), for matching;
    # NULL when neither is known (such a child is matched by identifier only). Rows written
    # before migration 0015 were filled in by it.
    birth_year: Mapped[int | None] = mapped_column(Integer)


class SubjectIdentifier(Base):
    """A subject's identifiers (`subjects.identifiers`) as rows, for matching by identifier: the
    system and the value as stored, upper-cased with spaces and hyphens dropped."""

    __tablename__ = "subject_identifiers"
    __table_args__ = (PrimaryKeyConstraint("system", "value", "subject_id"),)

    subject_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("subjects.id", ondelete="CASCADE"), index=True
    )
    system: Mapped[str] = mapped_column(String(40))
    value: Mapped[str] = mapped_column(String(64))


class SubjectMerge(Base):
    """Every merge and unmerge of two children's records (CONTRACT §11): who, when and why.
    Append-only, like the audit trail."""

    __tablename__ = "subject_merges"
    __table_args__ = (
        Index("ix_subject_merges_subject_order", "subject_id", "occurred_at", "id"),
        Index("ix_subject_merges_duplicate_order", "duplicate_id", "occurred_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    action: Mapped[str] = mapped_column(String(10))  # merge | unmerge
    subject_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("subjects.id"))  # the survivor
    duplicate_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("subjects.id"))
    reason: Mapped[str] = mapped_column(String(2000))
    actor_agency: Mapped[str] = mapped_column(String(40))
    actor_client_id: Mapped[str] = mapped_column(String(64))
    actor_user_id: Mapped[uuid.UUID | None]
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)
