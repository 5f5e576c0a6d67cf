//! `package!` and `section!`: a package (or a nested object) is one list of fields, each with
//! its wire key, type, doc comment and read style, from which the macros generate the struct,
//! the reader and the writer. The list's order is the reference's `addTo` order, which is the
//! order fields are written in (the byte-exact vectors in `testdata/vectors/wire.json` check it).
//!
//! Declarative macros, not a derive: a proc-macro crate would be a build dependency of this
//! `no_std` crate and of every firmware that links it, for about a hundred lines of patterns.
//!
//! # How to add a package
//!
//! 1. Add its type number to [`super::types`].
//! 2. In the family's file (`device.rs`, `mesh.rs`, `bridge.rs`, `gateway.rs`), write the
//!    fields in the order the reference's `addTo` writes them:
//!
//!    ```text
//!    package! {
//!        /// ExamplePackage (630, broadcast): what it is for.
//!        pub struct ExamplePackage: broadcast {
//!            /// `temp`: temperature, °C.
//!            temp: f64 = read_as("temp");
//!            /// `prio`: 0 critical … 3 low.
//!            prio: u8 = read_or("prio", 2);
//!            /// `level`: starts at 100 in `new`, reads as 0 when missing.
//!            level: u8 = read_as("level"), new = 100;
//!            /// `items` (`itemCount` is written as its length).
//!            items: Vec<ExampleItem> = section_array("items"), then "itemCount" = count;
//!            /// `message_type` (630).
//!            message_type: Option<u16> = message_type(630);
//!        }
//!    }
//!
//!    impl ExamplePackage {
//!        /// An example from `from`.
//!        pub fn new(from: u32) -> Self {
//!            Self::with_header(Header::broadcast(types::EXAMPLE, from))
//!        }
//!    }
//!    ```
//!
//!    `broadcast` or `single` says how the header is read: a single-routed package always has
//!    a `dest`. Nested objects are declared the same way with `section!` (no routing, no
//!    `new =`, no `message_type`; their `Default` is all zero).
//! 3. Add a row to the table that defines [`super::Package`] in `mod.rs` and re-export the
//!    struct there; add a wire vector to `testdata/vectors/wire.json` when the reference has
//!    one.
//!
//! **Read styles** (the [`Reader`](super::codec::Reader) methods of the same names):
//! - `read_as("k")`: plain assignment, `x = obj["k"]` (lenient conversions, 0 / `"null"`);
//! - `read_or("k", d)`: `x = obj["k"] | d` (only a value of the field's kind counts);
//! - `read_or_older("k", "old", d)`: `obj["k"] | obj["old"] | d` (a renamed key);
//! - `section("k")`, `section_array("k")`: a nested object, an array of them;
//! - `message_type(n)`: the current generation's `message_type`, `None` when the frame has
//!   none (written only when `Some`).
//!
//! **Options** after the read style:
//! - `, then "k2" = count` / `= seconds`: after this field, also write `"k2"` derived from it
//!   ([`count`](super::codec::count): an array's length, [`seconds`](super::codec::seconds):
//!   ms / 1000); reading skips `"k2"` (it is not kept in `extra`);
//! - `, new = expr` (packages only): the value `with_header` (hence `new`) starts the field
//!   at; without it, the read default (`read_or`'s `d`, `Some(n)` for `message_type`) or
//!   `Default::default()`.
//!
//! **Generated**: the struct (`header`, the fields, `extra`: unknown fields in wire order), a
//! private `with_header(Header) -> Self`, `from_envelope` and `to_json` (packages), or the
//! `Section` impl (sections). `new` is written by hand: its arguments and generation differ.
//! A package whose shape the list cannot express is written by hand with the same
//! [`codec`](super::codec) calls (StatusPackage, and why, in `device.rs`).

/// Defines a top-level package struct from its field list (see the module docs).
macro_rules! package {
    (
        $(#[$attr:meta])*
        pub struct $name:ident : $routing:ident {
            $(
                $(#[$field_attr:meta])*
                $field:ident : $ty:ty = $style:ident ( $($arg:tt)* )
                    $(, then $derived_key:literal = $derive:ident)?
                    $(, new = $init:expr)?
                ;
            )*
        }
    ) => {
        $(#[$attr])*
        #[derive(Clone, Debug, PartialEq)]
        pub struct $name {
            /// Plugin header.
            pub header: $crate::packages::Header,
            $(
                $(#[$field_attr])*
                pub $field: $ty,
            )*
            /// Fields this type does not know, in wire order.
            pub extra: $crate::json::Object,
        }

        impl $name {
            /// Every field at its initial value (`new =`, else the read default), no `extra`.
            fn with_header(header: $crate::packages::Header) -> Self {
                $name {
                    header,
                    $(
                        $field: $crate::packages::macros::initial_value!(
                            [$($init)?] $style($($arg)*)
                        ),
                    )*
                    extra: $crate::json::Object::new(),
                }
            }

            /// Typed decode, lenient like the reference (missing fields default).
            pub fn from_envelope(env: &$crate::message::Envelope) -> Self {
                let header = $crate::packages::Header::read(
                    env,
                    $crate::packages::macros::is_single!($routing),
                );
                let mut r = $crate::packages::codec::Reader::new(&env.body);
                $(
                    let $field = r.$style($($arg)*);
                    $( r.skip($derived_key); )?
                )*
                $name {
                    header,
                    $($field,)*
                    extra: r.rest_after_header(),
                }
            }

            /// Serialization in the reference's field order; unknown fields last.
            pub fn to_json(&self) -> ::alloc::vec::Vec<u8> {
                $crate::packages::codec::write_package(&self.header, &self.extra, |w| {
                    $(
                        $crate::packages::macros::put_field!(w, $style($($arg)*), &self.$field);
                        $( w.put($derived_key, &$crate::packages::codec::$derive(&self.$field)); )?
                    )*
                })
            }
        }
    };
}

/// Defines an object nested in a package (array element or configuration section) from its
/// field list: the struct with `extra`, `Default` (all zero) and the `Section` impl.
macro_rules! section {
    (
        $(#[$attr:meta])*
        pub struct $name:ident {
            $(
                $(#[$field_attr:meta])*
                $field:ident : $ty:ty = $style:ident ( $($arg:tt)* )
                    $(, then $derived_key:literal = $derive:ident)?
                ;
            )*
        }
    ) => {
        $(#[$attr])*
        #[derive(Clone, Debug, Default, PartialEq)]
        pub struct $name {
            $(
                $(#[$field_attr])*
                pub $field: $ty,
            )*
            /// Fields this object does not know, in wire order.
            pub extra: $crate::json::Object,
        }

        impl $crate::packages::codec::Section for $name {
            fn read(r: &mut $crate::packages::codec::Reader<'_>) -> Self {
                $(
                    let $field = r.$style($($arg)*);
                    $( r.skip($derived_key); )?
                )*
                $name {
                    $($field,)*
                    extra: r.obj_rest(),
                }
            }

            fn write_fields(&self, w: &mut $crate::packages::codec::ObjWriter<'_>) {
                $(
                    $crate::packages::macros::put_field!(w, $style($($arg)*), &self.$field);
                    $( w.put($derived_key, &$crate::packages::codec::$derive(&self.$field)); )?
                )*
                w.extra(&self.extra);
            }
        }
    };
}

/// The writer call for a field of the given read style.
macro_rules! put_field {
    ($w:ident, message_type($default:literal), $value:expr) => {
        $w.message_type(*$value)
    };
    ($w:ident, section($key:literal), $value:expr) => {
        $w.put_section($key, $value)
    };
    ($w:ident, section_array($key:literal), $value:expr) => {
        $w.put_section_array($key, $value)
    };
    ($w:ident, $style:ident($key:literal $(, $more:expr)*), $value:expr) => {
        $w.put($key, $value)
    };
}

/// A package field's initial value: `new =` if given, else its read default.
macro_rules! initial_value {
    ([$init:expr] $($read:tt)*) => {
        $init
    };
    ([] message_type($value:literal)) => {
        ::core::option::Option::Some($value)
    };
    ([] read_or($key:literal, $default:expr)) => {
        $default
    };
    ([] read_or_older($key:literal, $older:literal, $default:expr)) => {
        $default
    };
    ([] $($read:tt)*) => {
        ::core::default::Default::default()
    };
}

/// `single` or `broadcast`: whether the header always has a `dest`.
macro_rules! is_single {
    (single) => {
        true
    };
    (broadcast) => {
        false
    };
}

pub(super) use {initial_value, is_single, package, put_field, section};
