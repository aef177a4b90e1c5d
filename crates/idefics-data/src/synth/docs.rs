//! Documents from random records: receipts (items, prices, total), tables (people x numeric columns) and forms
//! (labelled fields, check boxes). Questions ask for fields, totals, maxima and comparisons.

use serde_json::json;

use super::canvas::{measure, Canvas, Fonts};
use super::task::{choose_questions, Example, Qa};
use crate::rng::Rng;

pub const ITEMS: [&str; 12] = [
    "apple", "bread", "milk", "coffee", "tea", "rice", "eggs", "cheese", "juice", "soap", "pasta",
    "butter",
];
pub const STORES: [&str; 8] = [
    "Maple", "Corner", "Sunny", "Harbor", "Pine", "Village", "Metro", "Oak",
];
pub const NAMES: [&str; 16] = [
    "Anna", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Hugo", "Iris", "Jack", "Kate",
    "Leo", "Mia", "Noah", "Olga", "Paul",
];
pub const COLUMNS: [&str; 5] = ["Score", "Age", "Points", "Sales", "Goals"];
pub const CITIES: [&str; 10] = [
    "Paris", "Berlin", "Madrid", "Rome", "Lisbon", "Vienna", "Prague", "Dublin", "Oslo", "Athens",
];
const INK: [u8; 3] = [25, 25, 25];

fn money(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Generates one document (receipt, table or form).
pub fn generate(rng: &mut Rng, fonts: &Fonts) -> Example {
    match rng.below(3) {
        0 => receipt(rng, fonts),
        1 => table(rng, fonts),
        _ => form(rng, fonts),
    }
}

fn receipt(rng: &mut Rng, fonts: &Fonts) -> Example {
    let n = rng.range(2, 6) as usize;
    let items: Vec<usize> = rng.sample_indices(ITEMS.len(), n);
    let prices: Vec<i64> = items.iter().map(|_| rng.range(50, 1999)).collect();
    let store = STORES[rng.below(STORES.len())];
    let total: i64 = prices.iter().sum();
    let px = rng.range(13, 18) as f32;
    let line_h = px * 1.5;
    let w = rng.range(220, 320) as u32;
    let h = ((n as f32 + 5.0) * line_h + 20.0) as u32;
    let mut c = Canvas::new(w, h, [250, 248, 240]);
    let wf = w as f32;
    let title = format!("{store} Store");
    let (tw, _) = measure(&fonts.mono, px * 1.2, &title);
    c.text(&fonts.mono, px * 1.2, (wf - tw) / 2.0, 8.0, INK, &title);
    let mut y = 8.0 + line_h * 1.6;
    c.line((10.0, y - 4.0), (wf - 10.0, y - 4.0), 1.0, INK);
    for (&item, &price) in items.iter().zip(&prices) {
        c.text(&fonts.mono, px, 12.0, y, INK, ITEMS[item]);
        let p = money(price);
        let (pw, _) = measure(&fonts.mono, px, &p);
        c.text(&fonts.mono, px, wf - 12.0 - pw, y, INK, &p);
        y += line_h;
    }
    c.line((10.0, y + 2.0), (wf - 10.0, y + 2.0), 1.0, INK);
    y += line_h * 0.4;
    c.text(&fonts.mono, px, 12.0, y, INK, "TOTAL");
    let t = money(total);
    let (pw, _) = measure(&fonts.mono, px, &t);
    c.text(&fonts.mono, px, wf - 12.0 - pw, y, INK, &t);

    let pick = rng.below(n);
    let mut qas = vec![
        Qa::new(
            "total",
            "What is the total amount on the receipt?",
            money(total),
            10_000,
        ),
        Qa::new(
            "price",
            format!(
                "How much does the {} cost on the receipt?",
                ITEMS[items[pick]]
            ),
            money(prices[pick]),
            2_000,
        ),
        Qa::new(
            "count_items",
            "How many items are listed on the receipt?",
            n.to_string(),
            5,
        ),
        Qa::new(
            "store",
            "What is the name of the store?",
            store,
            STORES.len(),
        ),
    ];
    let max = prices.iter().copied().max().unwrap_or(0);
    if prices.iter().filter(|&&p| p == max).count() == 1 {
        if let Some(i) = prices.iter().position(|&p| p == max) {
            qas.push(Qa::new(
                "most_expensive",
                "Which item on the receipt is the most expensive?",
                ITEMS[items[i]],
                ITEMS.len(),
            ));
        }
    }
    let caption = format!(
        "A receipt from {store} Store listing {n} items ({}) with a total of {}.",
        items
            .iter()
            .map(|&i| ITEMS[i])
            .collect::<Vec<_>>()
            .join(", "),
        money(total)
    );
    let record = json!({
        "type": "receipt", "store": store, "total": money(total),
        "items": items.iter().zip(&prices).map(|(&i, &p)| json!({"name": ITEMS[i], "price": money(p)})).collect::<Vec<_>>(),
    });
    Example {
        image: c.img,
        caption,
        qas: choose_questions(rng, qas, usize::MAX),
        record,
    }
}

fn table(rng: &mut Rng, fonts: &Fonts) -> Example {
    let rows = rng.range(3, 6) as usize;
    let ncols = rng.range(2, 3) as usize;
    let names: Vec<&str> = rng
        .sample_indices(NAMES.len(), rows)
        .into_iter()
        .map(|i| NAMES[i])
        .collect();
    let cols: Vec<&str> = rng
        .sample_indices(COLUMNS.len(), ncols)
        .into_iter()
        .map(|i| COLUMNS[i])
        .collect();
    let values: Vec<Vec<i64>> = (0..rows)
        .map(|_| (0..ncols).map(|_| rng.range(1, 99)).collect())
        .collect();
    let px = rng.range(12, 18) as f32;
    let cell_w = px * 5.0;
    let cell_h = px * 1.8;
    let (w, h) = (
        ((ncols + 1) as f32 * cell_w + 20.0) as u32,
        ((rows + 1) as f32 * cell_h + 20.0) as u32,
    );
    let mut c = Canvas::new(w, h, [255, 255, 255]);
    let header_bg = [[220, 230, 245], [230, 240, 220], [245, 230, 220]][rng.below(3)];
    c.fill_rect(
        10.0,
        10.0,
        10.0 + (ncols + 1) as f32 * cell_w,
        10.0 + cell_h,
        header_bg,
    );
    let cell = |r: usize, k: usize| {
        (
            10.0 + k as f32 * cell_w + 6.0,
            10.0 + r as f32 * cell_h + (cell_h - px * 1.2) / 2.0,
        )
    };
    let (x, y) = cell(0, 0);
    c.text(&fonts.sans, px, x, y, INK, "Name");
    for (k, col) in cols.iter().enumerate() {
        let (x, y) = cell(0, k + 1);
        c.text(&fonts.sans, px, x, y, INK, col);
    }
    for (r, name) in names.iter().enumerate() {
        let (x, y) = cell(r + 1, 0);
        c.text(&fonts.sans, px, x, y, INK, name);
        for (k, v) in values[r].iter().enumerate() {
            let (x, y) = cell(r + 1, k + 1);
            c.text(&fonts.sans, px, x, y, INK, &v.to_string());
        }
    }
    for r in 0..=rows + 1 {
        let y = 10.0 + r as f32 * cell_h;
        c.line(
            (10.0, y),
            (10.0 + (ncols + 1) as f32 * cell_w, y),
            1.0,
            [120, 120, 120],
        );
    }
    for k in 0..=ncols + 1 {
        let x = 10.0 + k as f32 * cell_w;
        c.line(
            (x, 10.0),
            (x, 10.0 + (rows + 1) as f32 * cell_h),
            1.0,
            [120, 120, 120],
        );
    }

    let (r, k) = (rng.below(rows), rng.below(ncols));
    let mut qas = vec![
        Qa::new(
            "cell",
            format!(
                "What is the {} of {} in the table?",
                cols[k].to_lowercase(),
                names[r]
            ),
            values[r][k].to_string(),
            99,
        ),
        Qa::new(
            "count_rows",
            "How many people are listed in the table?",
            rows.to_string(),
            4,
        ),
    ];
    let column: Vec<i64> = values.iter().map(|v| v[k]).collect();
    let max = column.iter().copied().max().unwrap_or(0);
    if column.iter().filter(|&&v| v == max).count() == 1 {
        if let Some(i) = column.iter().position(|&v| v == max) {
            qas.push(Qa::new(
                "argmax",
                format!(
                    "Who has the highest {} in the table?",
                    cols[k].to_lowercase()
                ),
                names[i],
                NAMES.len(),
            ));
        }
    }
    let pair = rng.sample_indices(rows, 2);
    if let [a, b] = pair[..] {
        if values[a][k] != values[b][k] {
            qas.push(Qa::new(
                "compare",
                format!(
                    "Is the {} of {} higher than that of {}?",
                    cols[k].to_lowercase(),
                    names[a],
                    names[b]
                ),
                yes_no(values[a][k] > values[b][k]),
                2,
            ));
        }
    }
    let caption = format!(
        "A table with {rows} people ({}) and the columns {}.",
        names.join(", "),
        cols.join(" and ")
    );
    let record = json!({"type": "table", "names": names, "columns": cols, "values": values});
    Example {
        image: c.img,
        caption,
        qas: choose_questions(rng, qas, usize::MAX),
        record,
    }
}

fn form(rng: &mut Rng, fonts: &Fonts) -> Example {
    let first = NAMES[rng.below(NAMES.len())];
    let city = CITIES[rng.below(CITIES.len())];
    let age = rng.range(18, 90);
    let id = rng.range(10000, 99999);
    let member = rng.chance(0.5);
    let newsletter = rng.chance(0.5);
    let px = rng.range(13, 18) as f32;
    let line_h = px * 2.2;
    let w = rng.range(260, 380) as u32;
    let h = (line_h * 7.0 + 24.0) as u32;
    let mut c = Canvas::new(w, h, [252, 252, 252]);
    let wf = w as f32;
    c.text(&fonts.sans, px * 1.3, 12.0, 10.0, INK, "Registration Form");
    let fields = [
        ("First name", first.to_string()),
        ("City", city.to_string()),
        ("Age", age.to_string()),
        ("ID", id.to_string()),
    ];
    let mut y = 10.0 + line_h * 1.1;
    let label_w = px * 6.0;
    for (label, value) in &fields {
        c.text(&fonts.sans, px, 12.0, y, [90, 90, 90], &format!("{label}:"));
        c.stroke_rect(
            12.0 + label_w,
            y - 4.0,
            wf - 12.0,
            y + px * 1.4,
            1.0,
            [150, 150, 150],
        );
        c.text(&fonts.mono, px, 18.0 + label_w, y, [20, 40, 140], value);
        y += line_h;
    }
    for (label, checked) in [("Member", member), ("Newsletter", newsletter)] {
        let s = px * 1.1;
        c.stroke_rect(12.0, y, 12.0 + s, y + s, 1.5, INK);
        if checked {
            c.line((14.0, y + 2.0), (10.0 + s, y + s - 2.0), 2.0, INK);
            c.line((10.0 + s, y + 2.0), (14.0, y + s - 2.0), 2.0, INK);
        }
        c.text(&fonts.sans, px, 20.0 + s, y, INK, label);
        y += line_h * 0.8;
    }
    let checkbox = if rng.chance(0.5) {
        ("Member", member)
    } else {
        ("Newsletter", newsletter)
    };
    let qas = vec![
        Qa::new(
            "first_name",
            "What is the first name written on the form?",
            first,
            NAMES.len(),
        ),
        Qa::new(
            "city",
            "What city is written on the form?",
            city,
            CITIES.len(),
        ),
        Qa::new(
            "age",
            "What age is written on the form?",
            age.to_string(),
            73,
        ),
        Qa::new(
            "id",
            "What is the ID number on the form?",
            id.to_string(),
            90_000,
        ),
        Qa::new(
            "checkbox",
            format!("Is the \"{}\" box checked?", checkbox.0),
            yes_no(checkbox.1),
            2,
        ),
    ];
    let caption = format!(
        "A registration form for {first}, age {age}, from {city}, ID {id}; member box {}, newsletter box {}.",
        if member { "checked" } else { "unchecked" },
        if newsletter { "checked" } else { "unchecked" }
    );
    let record = json!({
        "type": "form", "first_name": first, "city": city, "age": age, "id": id,
        "member": member, "newsletter": newsletter,
    });
    Example {
        image: c.img,
        caption,
        qas: choose_questions(rng, qas, usize::MAX),
        record,
    }
}
