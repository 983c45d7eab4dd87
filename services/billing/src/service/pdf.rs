//! Invoices as PDF for people: an A4 page (more when the lines do not fit) with the issuer, the
//! partner, the period, every line, tax, credits and the amount due. Written with `pdf-writer`
//! and the standard Helvetica fonts (WinAnsi encoding), so no font file is needed.

use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, Str};
use peage_core::{InvoiceRecord, InvoiceStatus};
use rust_decimal::Decimal;

use super::invoicing::Issuer;

const WIDTH: f32 = 595.0;
const HEIGHT: f32 = 842.0;
const MARGIN: f32 = 50.0;
const ROW: f32 = 15.0;
const REGULAR: Name = Name(b"F1");
const BOLD: Name = Name(b"F2");

/// Text in WinAnsi (cp1252): Latin-1 as is, a few typographic signs mapped, the rest as `?`.
fn win_ansi(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '€' => out.push(0x80),
            '–' => out.push(0x96),
            '—' => out.push(0x97),
            '‘' | '’' => out.push(b'\''),
            '“' | '”' => out.push(b'"'),
            '…' => out.push(0x85),
            '∞' => out.extend_from_slice(b"inf"),
            c if (c as u32) < 0x80 => out.push(c as u8),
            c if (0xA0..=0xFF).contains(&(c as u32)) => out.push(c as u32 as u8),
            _ => out.push(b'?'),
        }
    }
    out
}

/// Width of `s` in Helvetica at `size` points: exact for digits and punctuation (what is
/// right-aligned), an average for letters.
fn text_width(s: &str, size: f32) -> f32 {
    let units: u32 = s
        .chars()
        .map(|c| match c {
            '0'..='9' => 556,
            '.' | ',' | ' ' => 278,
            '-' => 333,
            '%' => 889,
            'A'..='Z' => 667,
            _ => 556,
        })
        .sum();
    units as f32 * size / 1000.0
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

struct Page {
    content: Content,
    y: f32,
}

impl Page {
    fn new() -> Page {
        Page {
            content: Content::new(),
            y: HEIGHT - MARGIN,
        }
    }

    fn text(&mut self, x: f32, y: f32, font: Name, size: f32, s: &str) {
        self.content
            .begin_text()
            .set_font(font, size)
            .next_line(x, y)
            .show(Str(&win_ansi(s)))
            .end_text();
    }

    fn right(&mut self, right_x: f32, y: f32, font: Name, size: f32, s: &str) {
        self.text(right_x - text_width(s, size), y, font, size, s);
    }

    fn rule(&mut self, y: f32) {
        self.content
            .set_line_width(0.5)
            .move_to(MARGIN, y)
            .line_to(WIDTH - MARGIN, y)
            .stroke();
    }
}

/// `49` as `49.00` in EUR; finer unit prices (`0.0005`) keep their digits.
fn at_least(mut d: Decimal, minor: u32) -> Decimal {
    if d.scale() < minor {
        d.rescale(minor);
    }
    d
}

fn money(amount: Decimal, code: &str) -> String {
    format!("{amount} {code}")
}

/// What a page shows: the same layout serves invoices and credit notes.
struct Document {
    title: &'static str,
    /// Label and value, top right.
    facts: Vec<(&'static str, String)>,
    /// The partner's name, then smaller lines (its id, its plan).
    bill_to: (String, Vec<String>),
    currency: String,
    /// Description, quantity, unit price, amount.
    rows: Vec<[String; 4]>,
    /// Label, value, bold.
    totals: Vec<(String, String, bool)>,
    footer: String,
}

/// Renders one invoice. `partner_name` is shown under "Bill to".
pub fn render(record: &InvoiceRecord, partner_name: &str, issuer: &Issuer) -> Vec<u8> {
    let inv = &record.invoice;
    let code = inv.currency.code();
    let minor = inv.currency.minor_units();
    let title = match record.status {
        InvoiceStatus::Draft => "DRAFT INVOICE",
        InvoiceStatus::Finalized => "INVOICE",
        InvoiceStatus::Void => "VOID INVOICE",
    };
    let facts = vec![
        (
            "Number",
            record
                .number
                .clone()
                .unwrap_or_else(|| "not yet numbered".into()),
        ),
        (
            "Issued",
            record
                .finalized_at
                .map(|t| t.format("%Y-%m-%d").to_string())
                .unwrap_or_else(|| "-".into()),
        ),
        (
            "Period",
            format!(
                "{} to {}",
                inv.period
                    .start
                    .with_timezone(&tz_of(&inv.timezone))
                    .format("%Y-%m-%d"),
                // The period is half-open: show its last day.
                (inv.period.end - chrono::Duration::seconds(1))
                    .with_timezone(&tz_of(&inv.timezone))
                    .format("%Y-%m-%d")
            ),
        ),
        ("Time zone", inv.timezone.clone()),
        ("Currency", code.to_string()),
    ];
    let plans: Vec<String> = inv
        .plans
        .iter()
        .map(|s| format!("{} (version {})", s.plan_id, s.plan_version))
        .collect();
    let mut totals = vec![("Subtotal".to_string(), money(inv.subtotal, code), false)];
    if let Some(t) = &inv.tax {
        totals.push((tax_label(t), money(t.amount, code), false));
    }
    totals.push(("Total".into(), money(inv.total, code), true));
    if !inv.credits_applied.is_zero() {
        totals.push((
            "Prepaid credits".into(),
            money(-inv.credits_applied, code),
            false,
        ));
    }
    totals.push(("Amount due".into(), money(inv.amount_due, code), true));
    layout(
        Document {
            title,
            facts,
            bill_to: {
                let details = inv.bill_to.clone().unwrap_or_default();
                let mut lines = details.address.clone();
                lines.extend(details.tax_id.as_ref().map(|t| format!("Tax ID: {t}")));
                lines.extend(details.email.as_ref().map(|e| e.to_string()));
                lines.push(format!("Partner ID: {}", inv.partner_id));
                lines.push(format!("Plan: {}", plans.join(", then ")));
                (
                    details
                        .legal_name
                        .unwrap_or_else(|| partner_name.to_string()),
                    lines,
                )
            },
            currency: code.to_string(),
            rows: inv
                .lines
                .iter()
                .map(|l| {
                    [
                        l.description.clone(),
                        l.quantity.to_string(),
                        at_least(l.unit_price, minor).to_string(),
                        l.amount.to_string(),
                    ]
                })
                .collect(),
            totals,
            footer: format!(
                "Invoice {} - amounts are rounded half to even to the currency's minor unit, once per line and once for tax.",
                record.id
            ),
        },
        issuer,
    )
}

/// Renders one credit note.
pub fn render_credit_note(
    record: &peage_billing_store::CreditNoteRecord,
    partner_name: &str,
    issuer: &Issuer,
) -> Vec<u8> {
    let n = &record.note;
    let code = n.currency.code();
    let method = match n.method {
        peage_core::credit_note::CreditMethod::Refund => "refunded",
        peage_core::credit_note::CreditMethod::Credit => "credited to the prepaid balance",
    };
    let mut totals = vec![("Subtotal".to_string(), money(n.subtotal, code), false)];
    if let Some(t) = &n.tax {
        totals.push((tax_label(t), money(t.amount, code), false));
    }
    totals.push(("Total credited".into(), money(n.total, code), true));
    layout(
        Document {
            title: "CREDIT NOTE",
            facts: vec![
                ("Number", record.number.clone()),
                ("Issued", record.created_at.format("%Y-%m-%d").to_string()),
                ("Invoice", n.invoice_number.clone()),
                ("Currency", code.to_string()),
            ],
            bill_to: (
                partner_name.to_string(),
                vec![
                    format!("Partner ID: {}", n.partner_id),
                    format!("Reason: {}", n.reason),
                    format!("The total is {method}."),
                ],
            ),
            currency: code.to_string(),
            rows: n
                .lines
                .iter()
                .map(|l| [l.description.clone(), String::new(), String::new(), l.amount.to_string()])
                .collect(),
            totals,
            footer: format!(
                "Credit note {} on invoice {} - tax at the invoice's rate, rounded half to even once.",
                record.id, n.invoice_id
            ),
        },
        issuer,
    )
}

fn tax_label(t: &peage_core::invoice::Tax) -> String {
    format!(
        "{} ({}%)",
        t.label,
        (t.rate * Decimal::from(100)).normalize()
    )
}

fn layout(doc: Document, issuer: &Issuer) -> Vec<u8> {
    let code = doc.currency.as_str();
    let mut pages: Vec<Page> = Vec::new();
    let mut p = Page::new();

    // Issuer, top left; title and number, top right.
    p.text(MARGIN, p.y, BOLD, 16.0, &issuer.name);
    p.right(WIDTH - MARGIN, p.y, BOLD, 16.0, doc.title);
    let mut left_y = p.y - 18.0;
    for line in &issuer.address {
        p.text(MARGIN, left_y, REGULAR, 9.0, line);
        left_y -= 12.0;
    }
    if let Some(tax_id) = &issuer.tax_id {
        p.text(MARGIN, left_y, REGULAR, 9.0, &format!("Tax ID: {tax_id}"));
        left_y -= 12.0;
    }
    let mut right_y = p.y - 18.0;
    for (k, v) in &doc.facts {
        p.right(WIDTH - MARGIN - 150.0, right_y, BOLD, 9.0, k);
        p.text(WIDTH - MARGIN - 140.0, right_y, REGULAR, 9.0, v);
        right_y -= 12.0;
    }
    p.y = left_y.min(right_y) - 14.0;
    p.text(MARGIN, p.y, BOLD, 10.0, "Bill to");
    p.y -= 13.0;
    p.text(MARGIN, p.y, REGULAR, 10.0, &doc.bill_to.0);
    for line in &doc.bill_to.1 {
        p.y -= 12.0;
        p.text(MARGIN, p.y, REGULAR, 9.0, &clip(line, 110));
    }
    p.y -= 24.0;

    let (qty_x, price_x, amount_x) = (
        WIDTH - MARGIN - 200.0,
        WIDTH - MARGIN - 95.0,
        WIDTH - MARGIN,
    );
    let header = |p: &mut Page| {
        p.text(MARGIN, p.y, BOLD, 9.0, "Description");
        p.right(qty_x, p.y, BOLD, 9.0, "Quantity");
        p.right(price_x, p.y, BOLD, 9.0, "Unit price");
        p.right(amount_x, p.y, BOLD, 9.0, &format!("Amount ({code})"));
        p.y -= 5.0;
        p.rule(p.y);
        p.y -= ROW;
    };
    header(&mut p);
    for [description, quantity, unit_price, amount] in &doc.rows {
        if p.y < MARGIN + 140.0 {
            p.text(
                MARGIN,
                MARGIN - 20.0,
                REGULAR,
                8.0,
                "continued on the next page",
            );
            pages.push(std::mem::replace(&mut p, Page::new()));
            header(&mut p);
        }
        p.text(MARGIN, p.y, REGULAR, 9.0, &clip(description, 62));
        p.right(qty_x, p.y, REGULAR, 9.0, quantity);
        p.right(price_x, p.y, REGULAR, 9.0, unit_price);
        p.right(amount_x, p.y, REGULAR, 9.0, amount);
        p.y -= ROW;
    }
    p.rule(p.y + ROW - 5.0);
    p.y -= 4.0;
    for (label, value, bold) in doc.totals {
        let font = if bold { BOLD } else { REGULAR };
        p.right(price_x, p.y, font, 10.0, &label);
        p.right(amount_x, p.y, font, 10.0, &value);
        p.y -= ROW;
    }
    p.text(MARGIN, MARGIN, REGULAR, 7.5, &doc.footer);
    pages.push(p);

    let mut pdf = Pdf::new();
    let catalog_id = Ref::new(1);
    let tree_id = Ref::new(2);
    let regular_id = Ref::new(3);
    let bold_id = Ref::new(4);
    let page_ids: Vec<Ref> = (0..pages.len())
        .map(|i| Ref::new(5 + 2 * i as i32))
        .collect();
    pdf.catalog(catalog_id).pages(tree_id);
    pdf.pages(tree_id)
        .kids(page_ids.iter().copied())
        .count(pages.len() as i32);
    pdf.type1_font(regular_id)
        .base_font(Name(b"Helvetica"))
        .encoding_predefined(Name(b"WinAnsiEncoding"));
    pdf.type1_font(bold_id)
        .base_font(Name(b"Helvetica-Bold"))
        .encoding_predefined(Name(b"WinAnsiEncoding"));
    for (page, id) in pages.into_iter().zip(&page_ids) {
        let content_id = Ref::new(id.get() + 1);
        let mut pg = pdf.page(*id);
        pg.media_box(Rect::new(0.0, 0.0, WIDTH, HEIGHT));
        pg.parent(tree_id);
        pg.contents(content_id);
        pg.resources()
            .fonts()
            .pair(REGULAR, regular_id)
            .pair(BOLD, bold_id);
        pg.finish();
        let data = page.content.finish();
        pdf.stream(content_id, data.as_slice());
    }
    pdf.finish()
}

fn tz_of(name: &str) -> chrono_tz::Tz {
    name.parse().unwrap_or(chrono_tz::Tz::UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invoice_with_many_lines_continues_on_more_pages() {
        use chrono::{TimeZone, Utc};
        use peage_core::pricing::Plan;
        let plan: Plan = serde_json::from_value(serde_json::json!({
            "id": "p", "name": "P", "version": "v", "currency": "EUR",
            "period": {"every": "month", "anchor_day": 1}, "base_fee": "1", "tax": null,
            "minimum_commitment": null, "charges": [], "quotas": [], "rate_limit": null
        }))
        .unwrap();
        let period = peage_core::BillingPeriod {
            start: Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap(),
            end: Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap(),
        };
        let mut invoice = peage_core::Invoice::compute("prt_x", &plan, period, &[]).unwrap();
        let line = invoice.lines[0].clone();
        invoice.lines = vec![line; 120];
        let now = Utc::now();
        let record = InvoiceRecord {
            id: "inv_x".into(),
            number: None,
            status: InvoiceStatus::Draft,
            partner_id: "prt_x".into(),
            period_label: "2026-10".into(),
            created_at: now,
            updated_at: now,
            finalized_at: None,
            voided_at: None,
            finalized_by: None,
            voided_by: None,
            payment: Default::default(),
            state: Default::default(),
            invoice,
        };
        let pdf = render(&record, "X", &Issuer::default());
        let text = String::from_utf8_lossy(&pdf);
        let one_page = render(
            &InvoiceRecord {
                invoice: peage_core::Invoice::compute("prt_x", &plan, period, &[]).unwrap(),
                ..record.clone()
            },
            "X",
            &Issuer::default(),
        );
        assert!(String::from_utf8_lossy(&one_page).contains("/Count 1"));
        // About 35 lines fit a page after the header: 120 lines take 4 pages.
        assert!(
            text.contains("/Count 4"),
            "pages: {}",
            text.matches("/Type /Page\n").count()
        );
    }

    #[test]
    fn win_ansi_maps_the_euro_sign_and_accents() {
        assert_eq!(
            win_ansi("Péage €"),
            vec![b'P', 0xE9, b'a', b'g', b'e', b' ', 0x80]
        );
        assert_eq!(win_ansi("0 – ∞"), b"0 \x96 inf".to_vec());
        assert_eq!(win_ansi("日"), b"?".to_vec());
    }
}
