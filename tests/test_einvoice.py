"""gateway/einvoice.py: Factur-X/ZUGFeRD PDFs and bare XRechnung/Peppol/CII XMLs
recognised, every key field extracted, validated against the Factur-X XSDs that
drafthorse ships, and hostile input refused quickly (issue 17 items 3, 5, 6).

Every fixture is built here: the CII and UBL XMLs are written by hand after the
EN 16931 / XRechnung 3.0 examples; the PDFs are a blank page made with pypdf to
which drafthorse attaches the XML as Factur-X (PDF/A-3 associated file, XMP
metadata), or pypdf attaches it under the ZUGFeRD 2.0 / 1.0 names.
"""

from __future__ import annotations

import io
import time
import zlib

import pytest
from drafthorse.pdf import attach_xml
from pypdf import PdfWriter
from pypdf.generic import NameObject

from gateway import einvoice
from gateway.einvoice import EInvoice, detect, iban_changed, normalise_iban

# ----------------------------------------------------------------------------- fixtures

CII_HEAD = """<?xml version="1.0" encoding="UTF-8"?>
<rsm:CrossIndustryInvoice xmlns:rsm="urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100"
    xmlns:qdt="urn:un:unece:uncefact:data:standard:QualifiedDataType:100"
    xmlns:ram="urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100"
    xmlns:udt="urn:un:unece:uncefact:data:standard:UnqualifiedDataType:100">
"""

# EN 16931 (COMFORT): one line, 19 % VAT, SEPA credit transfer to DE02 1203 0000 0000 2020 51.
CII_EN16931 = (
    CII_HEAD
    + """  <rsm:ExchangedDocumentContext>
    <ram:GuidelineSpecifiedDocumentContextParameter>
      <ram:ID>urn:cen.eu:en16931:2017</ram:ID>
    </ram:GuidelineSpecifiedDocumentContextParameter>
  </rsm:ExchangedDocumentContext>
  <rsm:ExchangedDocument>
    <ram:ID>RE-2025-0471</ram:ID>
    <ram:TypeCode>380</ram:TypeCode>
    <ram:IssueDateTime><udt:DateTimeString format="102">20250314</udt:DateTimeString></ram:IssueDateTime>
    <ram:IncludedNote><ram:Content>Lieferung gemäß Bestellung 4711.</ram:Content></ram:IncludedNote>
  </rsm:ExchangedDocument>
  <rsm:SupplyChainTradeTransaction>
    <ram:IncludedSupplyChainTradeLineItem>
      <ram:AssociatedDocumentLineDocument><ram:LineID>1</ram:LineID></ram:AssociatedDocumentLineDocument>
      <ram:SpecifiedTradeProduct>
        <ram:SellerAssignedID>SCR-M6-1000</ram:SellerAssignedID>
        <ram:Name>Schrauben M6 x 40, Karton à 1000 Stück</ram:Name>
      </ram:SpecifiedTradeProduct>
      <ram:SpecifiedLineTradeAgreement>
        <ram:NetPriceProductTradePrice><ram:ChargeAmount>45.00</ram:ChargeAmount></ram:NetPriceProductTradePrice>
      </ram:SpecifiedLineTradeAgreement>
      <ram:SpecifiedLineTradeDelivery><ram:BilledQuantity unitCode="C62">20</ram:BilledQuantity></ram:SpecifiedLineTradeDelivery>
      <ram:SpecifiedLineTradeSettlement>
        <ram:ApplicableTradeTax>
          <ram:TypeCode>VAT</ram:TypeCode>
          <ram:CategoryCode>S</ram:CategoryCode>
          <ram:RateApplicablePercent>19.00</ram:RateApplicablePercent>
        </ram:ApplicableTradeTax>
        <ram:SpecifiedTradeSettlementLineMonetarySummation>
          <ram:LineTotalAmount>900.00</ram:LineTotalAmount>
        </ram:SpecifiedTradeSettlementLineMonetarySummation>
      </ram:SpecifiedLineTradeSettlement>
    </ram:IncludedSupplyChainTradeLineItem>
    <ram:ApplicableHeaderTradeAgreement>
      <ram:SellerTradeParty>
        <ram:Name>Müller Schraubenhandel GmbH</ram:Name>
        <ram:PostalTradeAddress>
          <ram:PostcodeCode>10115</ram:PostcodeCode>
          <ram:LineOne>Invalidenstraße 12</ram:LineOne>
          <ram:CityName>Berlin</ram:CityName>
          <ram:CountryID>DE</ram:CountryID>
        </ram:PostalTradeAddress>
        <ram:SpecifiedTaxRegistration><ram:ID schemeID="FC">27/123/45678</ram:ID></ram:SpecifiedTaxRegistration>
        <ram:SpecifiedTaxRegistration><ram:ID schemeID="VA">DE123456789</ram:ID></ram:SpecifiedTaxRegistration>
      </ram:SellerTradeParty>
      <ram:BuyerTradeParty>
        <ram:Name>Beispiel Maschinenbau AG</ram:Name>
        <ram:PostalTradeAddress>
          <ram:PostcodeCode>80331</ram:PostcodeCode>
          <ram:LineOne>Marienplatz 1</ram:LineOne>
          <ram:CityName>München</ram:CityName>
          <ram:CountryID>DE</ram:CountryID>
        </ram:PostalTradeAddress>
      </ram:BuyerTradeParty>
      <ram:BuyerOrderReferencedDocument><ram:IssuerAssignedID>4711</ram:IssuerAssignedID></ram:BuyerOrderReferencedDocument>
    </ram:ApplicableHeaderTradeAgreement>
    <ram:ApplicableHeaderTradeDelivery>
      <ram:ActualDeliverySupplyChainEvent>
        <ram:OccurrenceDateTime><udt:DateTimeString format="102">20250310</udt:DateTimeString></ram:OccurrenceDateTime>
      </ram:ActualDeliverySupplyChainEvent>
    </ram:ApplicableHeaderTradeDelivery>
    <ram:ApplicableHeaderTradeSettlement>
      <ram:PaymentReference>RE-2025-0471</ram:PaymentReference>
      <ram:InvoiceCurrencyCode>EUR</ram:InvoiceCurrencyCode>
      <ram:SpecifiedTradeSettlementPaymentMeans>
        <ram:TypeCode>58</ram:TypeCode>
        <ram:PayeePartyCreditorFinancialAccount>
          <ram:IBANID>DE02120300000000202051</ram:IBANID>
        </ram:PayeePartyCreditorFinancialAccount>
      </ram:SpecifiedTradeSettlementPaymentMeans>
      <ram:ApplicableTradeTax>
        <ram:CalculatedAmount>171.00</ram:CalculatedAmount>
        <ram:TypeCode>VAT</ram:TypeCode>
        <ram:BasisAmount>900.00</ram:BasisAmount>
        <ram:CategoryCode>S</ram:CategoryCode>
        <ram:RateApplicablePercent>19.00</ram:RateApplicablePercent>
      </ram:ApplicableTradeTax>
      <ram:SpecifiedTradePaymentTerms>
        <ram:Description>Zahlbar innerhalb von 30 Tagen ohne Abzug.</ram:Description>
        <ram:DueDateDateTime><udt:DateTimeString format="102">20250413</udt:DateTimeString></ram:DueDateDateTime>
      </ram:SpecifiedTradePaymentTerms>
      <ram:SpecifiedTradeSettlementHeaderMonetarySummation>
        <ram:LineTotalAmount>900.00</ram:LineTotalAmount>
        <ram:TaxBasisTotalAmount>900.00</ram:TaxBasisTotalAmount>
        <ram:TaxTotalAmount currencyID="EUR">171.00</ram:TaxTotalAmount>
        <ram:GrandTotalAmount>1071.00</ram:GrandTotalAmount>
        <ram:DuePayableAmount>1071.00</ram:DuePayableAmount>
      </ram:SpecifiedTradeSettlementHeaderMonetarySummation>
    </ram:ApplicableHeaderTradeSettlement>
  </rsm:SupplyChainTradeTransaction>
</rsm:CrossIndustryInvoice>
"""
).encode()

# MINIMUM: header only, French seller, 20 % VAT; no payment means, no due date.
CII_MINIMUM = (
    CII_HEAD
    + """  <rsm:ExchangedDocumentContext>
    <ram:BusinessProcessSpecifiedDocumentContextParameter><ram:ID>A1</ram:ID></ram:BusinessProcessSpecifiedDocumentContextParameter>
    <ram:GuidelineSpecifiedDocumentContextParameter><ram:ID>urn:factur-x.eu:1p0:minimum</ram:ID></ram:GuidelineSpecifiedDocumentContextParameter>
  </rsm:ExchangedDocumentContext>
  <rsm:ExchangedDocument>
    <ram:ID>FA-2025-00118</ram:ID>
    <ram:TypeCode>380</ram:TypeCode>
    <ram:IssueDateTime><udt:DateTimeString format="102">20250201</udt:DateTimeString></ram:IssueDateTime>
  </rsm:ExchangedDocument>
  <rsm:SupplyChainTradeTransaction>
    <ram:ApplicableHeaderTradeAgreement>
      <ram:BuyerReference>SERVICE-ACHATS</ram:BuyerReference>
      <ram:SellerTradeParty>
        <ram:Name>Papeterie Dupont SARL</ram:Name>
        <ram:SpecifiedLegalOrganization><ram:ID schemeID="0002">123456789</ram:ID></ram:SpecifiedLegalOrganization>
        <ram:PostalTradeAddress><ram:CountryID>FR</ram:CountryID></ram:PostalTradeAddress>
        <ram:SpecifiedTaxRegistration><ram:ID schemeID="VA">FR32123456789</ram:ID></ram:SpecifiedTaxRegistration>
      </ram:SellerTradeParty>
      <ram:BuyerTradeParty>
        <ram:Name>Cabinet Martin &amp; Associés</ram:Name>
        <ram:SpecifiedLegalOrganization><ram:ID schemeID="0002">987654321</ram:ID></ram:SpecifiedLegalOrganization>
      </ram:BuyerTradeParty>
    </ram:ApplicableHeaderTradeAgreement>
    <ram:ApplicableHeaderTradeDelivery/>
    <ram:ApplicableHeaderTradeSettlement>
      <ram:InvoiceCurrencyCode>EUR</ram:InvoiceCurrencyCode>
      <ram:SpecifiedTradeSettlementHeaderMonetarySummation>
        <ram:TaxBasisTotalAmount>250.00</ram:TaxBasisTotalAmount>
        <ram:TaxTotalAmount currencyID="EUR">50.00</ram:TaxTotalAmount>
        <ram:GrandTotalAmount>300.00</ram:GrandTotalAmount>
        <ram:DuePayableAmount>300.00</ram:DuePayableAmount>
      </ram:SpecifiedTradeSettlementHeaderMonetarySummation>
    </ram:ApplicableHeaderTradeSettlement>
  </rsm:SupplyChainTradeTransaction>
</rsm:CrossIndustryInvoice>
"""
).encode()

# XRechnung 3.0 in CII: Leitweg-ID as BuyerReference, seller contact and e-mail, two lines.
CII_XRECHNUNG = (
    CII_HEAD
    + """  <rsm:ExchangedDocumentContext>
    <ram:BusinessProcessSpecifiedDocumentContextParameter>
      <ram:ID>urn:fdc:peppol.eu:2017:poacc:billing:01:1.0</ram:ID>
    </ram:BusinessProcessSpecifiedDocumentContextParameter>
    <ram:GuidelineSpecifiedDocumentContextParameter>
      <ram:ID>urn:cen.eu:en16931:2017#compliant#urn:xeinkauf.de:kosit:xrechnung_3.0</ram:ID>
    </ram:GuidelineSpecifiedDocumentContextParameter>
  </rsm:ExchangedDocumentContext>
  <rsm:ExchangedDocument>
    <ram:ID>2025-IT-0093</ram:ID>
    <ram:TypeCode>380</ram:TypeCode>
    <ram:IssueDateTime><udt:DateTimeString format="102">20250602</udt:DateTimeString></ram:IssueDateTime>
  </rsm:ExchangedDocument>
  <rsm:SupplyChainTradeTransaction>
    <ram:IncludedSupplyChainTradeLineItem>
      <ram:AssociatedDocumentLineDocument><ram:LineID>1</ram:LineID></ram:AssociatedDocumentLineDocument>
      <ram:SpecifiedTradeProduct><ram:Name>Wartung Serverraum, Mai 2025</ram:Name></ram:SpecifiedTradeProduct>
      <ram:SpecifiedLineTradeAgreement>
        <ram:NetPriceProductTradePrice><ram:ChargeAmount>95.00</ram:ChargeAmount></ram:NetPriceProductTradePrice>
      </ram:SpecifiedLineTradeAgreement>
      <ram:SpecifiedLineTradeDelivery><ram:BilledQuantity unitCode="HUR">12</ram:BilledQuantity></ram:SpecifiedLineTradeDelivery>
      <ram:SpecifiedLineTradeSettlement>
        <ram:ApplicableTradeTax>
          <ram:TypeCode>VAT</ram:TypeCode><ram:CategoryCode>S</ram:CategoryCode><ram:RateApplicablePercent>19</ram:RateApplicablePercent>
        </ram:ApplicableTradeTax>
        <ram:SpecifiedTradeSettlementLineMonetarySummation><ram:LineTotalAmount>1140.00</ram:LineTotalAmount></ram:SpecifiedTradeSettlementLineMonetarySummation>
      </ram:SpecifiedLineTradeSettlement>
    </ram:IncludedSupplyChainTradeLineItem>
    <ram:IncludedSupplyChainTradeLineItem>
      <ram:AssociatedDocumentLineDocument><ram:LineID>2</ram:LineID></ram:AssociatedDocumentLineDocument>
      <ram:SpecifiedTradeProduct><ram:Name>Anfahrtspauschale</ram:Name></ram:SpecifiedTradeProduct>
      <ram:SpecifiedLineTradeAgreement>
        <ram:NetPriceProductTradePrice><ram:ChargeAmount>60.00</ram:ChargeAmount></ram:NetPriceProductTradePrice>
      </ram:SpecifiedLineTradeAgreement>
      <ram:SpecifiedLineTradeDelivery><ram:BilledQuantity unitCode="C62">1</ram:BilledQuantity></ram:SpecifiedLineTradeDelivery>
      <ram:SpecifiedLineTradeSettlement>
        <ram:ApplicableTradeTax>
          <ram:TypeCode>VAT</ram:TypeCode><ram:CategoryCode>S</ram:CategoryCode><ram:RateApplicablePercent>19</ram:RateApplicablePercent>
        </ram:ApplicableTradeTax>
        <ram:SpecifiedTradeSettlementLineMonetarySummation><ram:LineTotalAmount>60.00</ram:LineTotalAmount></ram:SpecifiedTradeSettlementLineMonetarySummation>
      </ram:SpecifiedLineTradeSettlement>
    </ram:IncludedSupplyChainTradeLineItem>
    <ram:ApplicableHeaderTradeAgreement>
      <ram:BuyerReference>04011000-12345-34</ram:BuyerReference>
      <ram:SellerTradeParty>
        <ram:Name>Nordlicht IT-Service GmbH</ram:Name>
        <ram:SpecifiedLegalOrganization><ram:ID>HRB 98765</ram:ID></ram:SpecifiedLegalOrganization>
        <ram:DefinedTradeContact>
          <ram:PersonName>Jana Petersen</ram:PersonName>
          <ram:TelephoneUniversalCommunication><ram:CompleteNumber>+49 40 1234567</ram:CompleteNumber></ram:TelephoneUniversalCommunication>
          <ram:EmailURIUniversalCommunication><ram:URIID>rechnung@nordlicht-it.example</ram:URIID></ram:EmailURIUniversalCommunication>
        </ram:DefinedTradeContact>
        <ram:PostalTradeAddress>
          <ram:PostcodeCode>20095</ram:PostcodeCode><ram:LineOne>Mönckebergstraße 7</ram:LineOne>
          <ram:CityName>Hamburg</ram:CityName><ram:CountryID>DE</ram:CountryID>
        </ram:PostalTradeAddress>
        <ram:URIUniversalCommunication><ram:URIID schemeID="EM">rechnung@nordlicht-it.example</ram:URIID></ram:URIUniversalCommunication>
        <ram:SpecifiedTaxRegistration><ram:ID schemeID="VA">DE987654321</ram:ID></ram:SpecifiedTaxRegistration>
      </ram:SellerTradeParty>
      <ram:BuyerTradeParty>
        <ram:Name>Stadt Musterhausen, Amt für Informationstechnik</ram:Name>
        <ram:PostalTradeAddress>
          <ram:PostcodeCode>12345</ram:PostcodeCode><ram:LineOne>Rathausplatz 1</ram:LineOne>
          <ram:CityName>Musterhausen</ram:CityName><ram:CountryID>DE</ram:CountryID>
        </ram:PostalTradeAddress>
        <ram:URIUniversalCommunication><ram:URIID schemeID="0204">04011000-12345-34</ram:URIID></ram:URIUniversalCommunication>
      </ram:BuyerTradeParty>
    </ram:ApplicableHeaderTradeAgreement>
    <ram:ApplicableHeaderTradeDelivery>
      <ram:ActualDeliverySupplyChainEvent>
        <ram:OccurrenceDateTime><udt:DateTimeString format="102">20250531</udt:DateTimeString></ram:OccurrenceDateTime>
      </ram:ActualDeliverySupplyChainEvent>
    </ram:ApplicableHeaderTradeDelivery>
    <ram:ApplicableHeaderTradeSettlement>
      <ram:InvoiceCurrencyCode>EUR</ram:InvoiceCurrencyCode>
      <ram:SpecifiedTradeSettlementPaymentMeans>
        <ram:TypeCode>58</ram:TypeCode>
        <ram:Information>SEPA-Überweisung</ram:Information>
        <ram:PayeePartyCreditorFinancialAccount>
          <ram:IBANID>DE89 3704 0044 0532 0130 00</ram:IBANID>
          <ram:AccountName>Nordlicht IT-Service GmbH</ram:AccountName>
        </ram:PayeePartyCreditorFinancialAccount>
      </ram:SpecifiedTradeSettlementPaymentMeans>
      <ram:ApplicableTradeTax>
        <ram:CalculatedAmount>228.00</ram:CalculatedAmount>
        <ram:TypeCode>VAT</ram:TypeCode>
        <ram:BasisAmount>1200.00</ram:BasisAmount>
        <ram:CategoryCode>S</ram:CategoryCode>
        <ram:RateApplicablePercent>19</ram:RateApplicablePercent>
      </ram:ApplicableTradeTax>
      <ram:SpecifiedTradePaymentTerms>
        <ram:Description>Zahlbar bis 02.07.2025</ram:Description>
        <ram:DueDateDateTime><udt:DateTimeString format="102">20250702</udt:DateTimeString></ram:DueDateDateTime>
      </ram:SpecifiedTradePaymentTerms>
      <ram:SpecifiedTradeSettlementHeaderMonetarySummation>
        <ram:LineTotalAmount>1200.00</ram:LineTotalAmount>
        <ram:TaxBasisTotalAmount>1200.00</ram:TaxBasisTotalAmount>
        <ram:TaxTotalAmount currencyID="EUR">228.00</ram:TaxTotalAmount>
        <ram:GrandTotalAmount>1428.00</ram:GrandTotalAmount>
        <ram:DuePayableAmount>1428.00</ram:DuePayableAmount>
      </ram:SpecifiedTradeSettlementHeaderMonetarySummation>
    </ram:ApplicableHeaderTradeSettlement>
  </rsm:SupplyChainTradeTransaction>
</rsm:CrossIndustryInvoice>
"""
).encode()

# XRechnung 3.0 in UBL: the KoSIT example's shape (01.01a), the IBAN written with spaces.
UBL_XRECHNUNG = """<?xml version="1.0" encoding="UTF-8"?>
<ubl:Invoice xmlns:ubl="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"
    xmlns:cac="urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2"
    xmlns:cbc="urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2">
  <cbc:CustomizationID>urn:cen.eu:en16931:2017#compliant#urn:xeinkauf.de:kosit:xrechnung_3.0</cbc:CustomizationID>
  <cbc:ProfileID>urn:fdc:peppol.eu:2017:poacc:billing:01:1.0</cbc:ProfileID>
  <cbc:ID>XR-2025-1187</cbc:ID>
  <cbc:IssueDate>2025-04-22</cbc:IssueDate>
  <cbc:DueDate>2025-05-22</cbc:DueDate>
  <cbc:InvoiceTypeCode>380</cbc:InvoiceTypeCode>
  <cbc:Note>Es gelten unsere Allgemeinen Geschäftsbedingungen.</cbc:Note>
  <cbc:DocumentCurrencyCode>EUR</cbc:DocumentCurrencyCode>
  <cbc:BuyerReference>991-01234-56</cbc:BuyerReference>
  <cac:AccountingSupplierParty>
    <cac:Party>
      <cbc:EndpointID schemeID="EM">buchhaltung@lieferant.example</cbc:EndpointID>
      <cac:PartyName><cbc:Name>Bürobedarf Schmidt</cbc:Name></cac:PartyName>
      <cac:PostalAddress>
        <cbc:StreetName>Lindenallee 3</cbc:StreetName>
        <cbc:CityName>Köln</cbc:CityName>
        <cbc:PostalZone>50667</cbc:PostalZone>
        <cac:Country><cbc:IdentificationCode>DE</cbc:IdentificationCode></cac:Country>
      </cac:PostalAddress>
      <cac:PartyTaxScheme>
        <cbc:CompanyID>DE111222333</cbc:CompanyID>
        <cac:TaxScheme><cbc:ID>VAT</cbc:ID></cac:TaxScheme>
      </cac:PartyTaxScheme>
      <cac:PartyLegalEntity>
        <cbc:RegistrationName>Bürobedarf Schmidt e.K.</cbc:RegistrationName>
        <cbc:CompanyID>HRA 4455</cbc:CompanyID>
      </cac:PartyLegalEntity>
      <cac:Contact>
        <cbc:Name>Frank Schmidt</cbc:Name>
        <cbc:Telephone>+49 221 987654</cbc:Telephone>
        <cbc:ElectronicMail>buchhaltung@lieferant.example</cbc:ElectronicMail>
      </cac:Contact>
    </cac:Party>
  </cac:AccountingSupplierParty>
  <cac:AccountingCustomerParty>
    <cac:Party>
      <cbc:EndpointID schemeID="0204">991-01234-56</cbc:EndpointID>
      <cac:PostalAddress>
        <cbc:StreetName>Domkloster 4</cbc:StreetName>
        <cbc:CityName>Köln</cbc:CityName>
        <cbc:PostalZone>50667</cbc:PostalZone>
        <cac:Country><cbc:IdentificationCode>DE</cbc:IdentificationCode></cac:Country>
      </cac:PostalAddress>
      <cac:PartyLegalEntity><cbc:RegistrationName>Landesamt für Beispiele NRW</cbc:RegistrationName></cac:PartyLegalEntity>
    </cac:Party>
  </cac:AccountingCustomerParty>
  <cac:PaymentMeans>
    <cbc:PaymentMeansCode>58</cbc:PaymentMeansCode>
    <cbc:PaymentID>XR-2025-1187</cbc:PaymentID>
    <cac:PayeeFinancialAccount>
      <cbc:ID>de75 5121 0800 1245 1261 99</cbc:ID>
      <cbc:Name>Bürobedarf Schmidt e.K.</cbc:Name>
    </cac:PayeeFinancialAccount>
  </cac:PaymentMeans>
  <cac:PaymentTerms><cbc:Note>30 Tage netto</cbc:Note></cac:PaymentTerms>
  <cac:TaxTotal>
    <cbc:TaxAmount currencyID="EUR">37.05</cbc:TaxAmount>
    <cac:TaxSubtotal>
      <cbc:TaxableAmount currencyID="EUR">195.00</cbc:TaxableAmount>
      <cbc:TaxAmount currencyID="EUR">37.05</cbc:TaxAmount>
      <cac:TaxCategory>
        <cbc:ID>S</cbc:ID><cbc:Percent>19</cbc:Percent>
        <cac:TaxScheme><cbc:ID>VAT</cbc:ID></cac:TaxScheme>
      </cac:TaxCategory>
    </cac:TaxSubtotal>
  </cac:TaxTotal>
  <cac:LegalMonetaryTotal>
    <cbc:LineExtensionAmount currencyID="EUR">195.00</cbc:LineExtensionAmount>
    <cbc:TaxExclusiveAmount currencyID="EUR">195.00</cbc:TaxExclusiveAmount>
    <cbc:TaxInclusiveAmount currencyID="EUR">232.05</cbc:TaxInclusiveAmount>
    <cbc:PayableAmount currencyID="EUR">232.05</cbc:PayableAmount>
  </cac:LegalMonetaryTotal>
  <cac:InvoiceLine>
    <cbc:ID>1</cbc:ID>
    <cbc:InvoicedQuantity unitCode="XPK">30</cbc:InvoicedQuantity>
    <cbc:LineExtensionAmount currencyID="EUR">195.00</cbc:LineExtensionAmount>
    <cac:Item>
      <cbc:Name>Kopierpapier A4, 80 g, 500 Blatt</cbc:Name>
      <cac:ClassifiedTaxCategory>
        <cbc:ID>S</cbc:ID><cbc:Percent>19</cbc:Percent>
        <cac:TaxScheme><cbc:ID>VAT</cbc:ID></cac:TaxScheme>
      </cac:ClassifiedTaxCategory>
    </cac:Item>
    <cac:Price><cbc:PriceAmount currencyID="EUR">6.50</cbc:PriceAmount></cac:Price>
  </cac:InvoiceLine>
</ubl:Invoice>
""".encode()

# Peppol BIS Billing 3.0 credit note in UBL (default namespace), VAT also in the
# buyer's currency: the tax total in the document currency is the one taken.
UBL_PEPPOL_CREDITNOTE = b"""<?xml version="1.0" encoding="UTF-8"?>
<CreditNote xmlns="urn:oasis:names:specification:ubl:schema:xsd:CreditNote-2"
    xmlns:cac="urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2"
    xmlns:cbc="urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2">
  <cbc:CustomizationID>urn:cen.eu:en16931:2017#compliant#urn:fdc:peppol.eu:2017:poacc:billing:3.0</cbc:CustomizationID>
  <cbc:ProfileID>urn:fdc:peppol.eu:2017:poacc:billing:01:1.0</cbc:ProfileID>
  <cbc:ID>CN-7781</cbc:ID>
  <cbc:IssueDate>2025-03-03</cbc:IssueDate>
  <cbc:CreditNoteTypeCode>381</cbc:CreditNoteTypeCode>
  <cbc:DocumentCurrencyCode>EUR</cbc:DocumentCurrencyCode>
  <cbc:TaxCurrencyCode>SEK</cbc:TaxCurrencyCode>
  <cac:AccountingSupplierParty><cac:Party>
    <cbc:EndpointID schemeID="0088">7300010000001</cbc:EndpointID>
    <cac:PartyTaxScheme><cbc:CompanyID>NL123456789B01</cbc:CompanyID><cac:TaxScheme><cbc:ID>VAT</cbc:ID></cac:TaxScheme></cac:PartyTaxScheme>
    <cac:PartyLegalEntity><cbc:RegistrationName>Holland Office Supplies B.V.</cbc:RegistrationName></cac:PartyLegalEntity>
  </cac:Party></cac:AccountingSupplierParty>
  <cac:AccountingCustomerParty><cac:Party>
    <cbc:EndpointID schemeID="0007">5567321707</cbc:EndpointID>
    <cac:PartyName><cbc:Name>Svensk Kontor AB</cbc:Name></cac:PartyName>
  </cac:Party></cac:AccountingCustomerParty>
  <cac:PaymentMeans>
    <cbc:PaymentMeansCode>30</cbc:PaymentMeansCode>
    <cbc:PaymentDueDate>2025-04-02</cbc:PaymentDueDate>
    <cac:PayeeFinancialAccount><cbc:ID>NL91ABNA0417164300</cbc:ID></cac:PayeeFinancialAccount>
  </cac:PaymentMeans>
  <cac:TaxTotal><cbc:TaxAmount currencyID="SEK">241.50</cbc:TaxAmount></cac:TaxTotal>
  <cac:TaxTotal><cbc:TaxAmount currencyID="EUR">21.00</cbc:TaxAmount></cac:TaxTotal>
  <cac:LegalMonetaryTotal>
    <cbc:TaxExclusiveAmount currencyID="EUR">100.00</cbc:TaxExclusiveAmount>
    <cbc:TaxInclusiveAmount currencyID="EUR">121.00</cbc:TaxInclusiveAmount>
    <cbc:PayableAmount currencyID="EUR">121.00</cbc:PayableAmount>
  </cac:LegalMonetaryTotal>
  <cac:CreditNoteLine><cbc:ID>1</cbc:ID></cac:CreditNoteLine>
</CreditNote>
"""


def blank_pdf() -> bytes:
    writer = PdfWriter()
    writer.add_blank_page(width=595, height=842)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def pdf_with_attachment(name: str, data: bytes, *, extra: list[tuple[str, bytes]] = ()) -> bytes:
    writer = PdfWriter()
    writer.add_blank_page(width=595, height=842)
    for other_name, other in extra:
        writer.add_attachment(other_name, other)
    writer.add_attachment(name, data)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


@pytest.fixture(scope="module")
def facturx_en16931_pdf() -> bytes:
    return attach_xml(blank_pdf(), CII_EN16931, level="EN 16931")


@pytest.fixture(scope="module")
def facturx_minimum_pdf() -> bytes:
    return attach_xml(blank_pdf(), CII_MINIMUM, level="MINIMUM")


# ----------------------------------------------------------------------------- PDFs


def test_facturx_en16931_pdf_every_field(facturx_en16931_pdf):
    assert facturx_en16931_pdf.startswith(b"%PDF-")
    t0 = time.monotonic()
    inv = detect(facturx_en16931_pdf, "RE-2025-0471.pdf", "application/pdf")
    elapsed = time.monotonic() - t0
    assert isinstance(inv, EInvoice)
    assert inv.syntax == "CII"
    assert inv.profile == "EN 16931"
    assert inv.guideline_id == "urn:cen.eu:en16931:2017"
    assert inv.embedded_name == "factur-x.xml"
    assert inv.xml == CII_EN16931
    assert inv.as_dict() == {
        "syntax": "CII",
        "profile": "EN 16931",
        "seller": {"name": "Müller Schraubenhandel GmbH", "vat_id": "DE123456789"},
        "buyer": {"name": "Beispiel Maschinenbau AG"},
        "invoice_number": "RE-2025-0471",
        "issue_date": "2025-03-14",
        "due_date": "2025-04-13",
        "currency": "EUR",
        "totals": {"net": "900.00", "tax": "171.00", "gross": "1071.00"},
        "iban": "DE02120300000000202051",
        "valid": True,
        "errors": [],
    }
    assert inv.iban == "DE02120300000000202051" and inv.seller_vat_id == "DE123456789"
    assert elapsed < 2.0


def test_facturx_minimum_pdf_every_field(facturx_minimum_pdf):
    inv = detect(facturx_minimum_pdf, "facture.pdf", "application/pdf")
    assert inv is not None
    assert (inv.syntax, inv.profile, inv.embedded_name) == ("CII", "MINIMUM", "factur-x.xml")
    assert inv.xml == CII_MINIMUM
    assert inv.as_dict() == {
        "syntax": "CII",
        "profile": "MINIMUM",
        "seller": {"name": "Papeterie Dupont SARL", "vat_id": "FR32123456789"},
        "buyer": {"name": "Cabinet Martin & Associés"},
        "invoice_number": "FA-2025-00118",
        "issue_date": "2025-02-01",
        "due_date": None,
        "currency": "EUR",
        "totals": {"net": "250.00", "tax": "50.00", "gross": "300.00"},
        "iban": None,
        "valid": True,
        "errors": [],
    }


@pytest.mark.parametrize("name", ["zugferd-invoice.xml", "ZUGFeRD-invoice.xml", "xrechnung.xml"])
def test_zugferd_and_xrechnung_names_in_the_embedded_files_tree(name):
    # Written by pypdf into the EmbeddedFiles name tree (no /AF): the ZUGFeRD 2.0
    # and 1.0 names and the XRechnung one are found too, and the case is kept.
    pdf = pdf_with_attachment(name, CII_XRECHNUNG, extra=[("lieferschein.txt", b"Lieferschein 4711")])
    inv = detect(pdf, None, "application/octet-stream")
    assert inv is not None
    assert inv.embedded_name == name
    assert inv.profile == "XRECHNUNG"
    assert inv.fields["invoice_number"] == "2025-IT-0093"
    assert inv.xml == CII_XRECHNUNG


def test_known_name_wins_over_another_xml_attachment():
    other = CII_MINIMUM.replace(b"FA-2025-00118", b"OTHER-1")
    pdf = pdf_with_attachment("factur-x.xml", CII_EN16931, extra=[("anlage.xml", other)])
    inv = detect(pdf, "x.pdf", "application/pdf")
    assert inv.embedded_name == "factur-x.xml" and inv.fields["invoice_number"] == "RE-2025-0471"


def test_plain_pdf_is_not_an_einvoice():
    assert detect(blank_pdf(), "scan.pdf", "application/pdf") is None
    assert detect(pdf_with_attachment("notes.txt", b"hello"), "a.pdf", "application/pdf") is None
    # An embedded factur-x.xml that is no invoice at all.
    assert detect(pdf_with_attachment("factur-x.xml", b"<note>hi</note>"), "a.pdf", "application/pdf") is None


@pytest.mark.parametrize(
    "data",
    [
        b"%PDF-1.7\n",
        b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF",
        b"%PDF-1.4\n" + b"\x00\xff" * 5000,
    ],
)
def test_broken_pdfs_give_none(data):
    assert detect(data, "broken.pdf", "application/pdf") is None


def test_truncated_facturx_pdf_gives_none_or_the_invoice(facturx_en16931_pdf):
    for cut in (len(facturx_en16931_pdf) // 3, len(facturx_en16931_pdf) // 2, len(facturx_en16931_pdf) - 40):
        result = detect(facturx_en16931_pdf[:cut], "cut.pdf", "application/pdf")
        assert result is None or result.fields["invoice_number"] == "RE-2025-0471"


def test_deflate_bomb_as_factur_x_xml_is_refused_quickly():
    # 200 MB of spaces after a CII root compress to ~200 KB: refused at MAX_XML_BYTES
    # without inflating further.
    writer = PdfWriter()
    writer.add_blank_page(width=595, height=842)
    attachment = writer.add_attachment("factur-x.xml", b"placeholder")
    stream = attachment.pdf_object["/EF"]["/F"]
    compressor = zlib.compressobj(9)
    chunks = [compressor.compress(b"<rsm:CrossIndustryInvoice xmlns:rsm='" + einvoice.NS_CII.encode() + b"'>")]
    block = b" " * (1 << 20)
    chunks += [compressor.compress(block) for _ in range(200)]
    chunks.append(compressor.flush())
    stream._data = b"".join(chunks)
    stream[NameObject("/Filter")] = NameObject("/FlateDecode")
    out = io.BytesIO()
    writer.write(out)
    t0 = time.monotonic()
    assert detect(out.getvalue(), "bomb.pdf", "application/pdf") is None
    assert time.monotonic() - t0 < 1.0


# ----------------------------------------------------------------------------- bare XML


def test_xrechnung_ubl_every_field():
    inv = detect(UBL_XRECHNUNG, "XR-2025-1187.xml", "application/xml")
    assert inv is not None
    assert (inv.syntax, inv.profile, inv.embedded_name) == ("UBL", "XRECHNUNG", None)
    assert inv.xml == UBL_XRECHNUNG
    assert inv.as_dict() == {
        "syntax": "UBL",
        "profile": "XRECHNUNG",
        "seller": {"name": "Bürobedarf Schmidt e.K.", "vat_id": "DE111222333"},
        "buyer": {"name": "Landesamt für Beispiele NRW"},
        "invoice_number": "XR-2025-1187",
        "issue_date": "2025-04-22",
        "due_date": "2025-05-22",
        "currency": "EUR",
        "totals": {"net": "195.00", "tax": "37.05", "gross": "232.05"},
        "iban": "DE75512108001245126199",
        "valid": True,
        "errors": [],
    }


def test_xrechnung_cii_every_field():
    inv = detect(CII_XRECHNUNG, "rechnung.xml", "text/xml")
    assert inv is not None
    assert inv.as_dict() == {
        "syntax": "CII",
        "profile": "XRECHNUNG",
        "seller": {"name": "Nordlicht IT-Service GmbH", "vat_id": "DE987654321"},
        "buyer": {"name": "Stadt Musterhausen, Amt für Informationstechnik"},
        "invoice_number": "2025-IT-0093",
        "issue_date": "2025-06-02",
        "due_date": "2025-07-02",
        "currency": "EUR",
        "totals": {"net": "1200.00", "tax": "228.00", "gross": "1428.00"},
        "iban": "DE89370400440532013000",
        "valid": True,
        "errors": [],
    }
    assert inv.embedded_name is None and inv.xml == CII_XRECHNUNG


def test_peppol_creditnote_every_field():
    # By content: no file name, a generic content type.
    inv = detect(UBL_PEPPOL_CREDITNOTE, None, "application/octet-stream")
    assert inv is not None
    assert inv.as_dict() == {
        "syntax": "UBL",
        "profile": "PEPPOL BIS Billing 3.0",
        "seller": {"name": "Holland Office Supplies B.V.", "vat_id": "NL123456789B01"},
        "buyer": {"name": "Svensk Kontor AB"},
        "invoice_number": "CN-7781",
        "issue_date": "2025-03-03",
        "due_date": "2025-04-02",
        "currency": "EUR",
        "totals": {"net": "100.00", "tax": "21.00", "gross": "121.00"},
        "iban": "NL91ABNA0417164300",
        "valid": True,
        "errors": [],
    }


def test_utf16_xml_with_bom_is_read():
    data = CII_XRECHNUNG.decode().replace('encoding="UTF-8"', 'encoding="UTF-16"').encode("utf-16")
    inv = detect(data, "r.xml", "application/xml")
    assert inv is not None and inv.fields["seller"]["name"] == "Nordlicht IT-Service GmbH"


@pytest.mark.parametrize(
    "data",
    [
        b'<?xml version="1.0"?><Order xmlns="urn:oasis:names:specification:ubl:schema:xsd:Order-2"><ID>1</ID></Order>',
        b"<Invoice><ID>no namespace</ID></Invoice>",
        b'<?xml version="1.0"?><rss version="2.0"><channel><title>Invoice news</title></channel></rss>',
        b"<html><body><p>Your Invoice is attached</p></body></html>",
        b"<Invoice xmlns='urn:oasis:names:specification:ubl:schema:xsd:Invoice-2'><unclosed>",
        b"Invoice 2025-01, total 100 EUR",
        b"",
    ],
)
def test_non_invoice_input_gives_none(data):
    assert detect(data, "file.xml", "application/xml") is None


def test_billion_laughs_is_refused_quickly():
    entities = '<!ENTITY lol "lol">' + "".join(
        f'<!ENTITY lol{i} "{("&lol%s;" % (i - 1 if i > 1 else "")) * 10}">' for i in range(1, 10)
    )
    for root in ("lolz", f'rsm:CrossIndustryInvoice xmlns:rsm="{einvoice.NS_CII}"'):
        name = root.split()[0]
        bomb = f'<?xml version="1.0"?><!DOCTYPE {name} [{entities}]><{root}>&lol9;</{name}>'.encode()
        t0 = time.monotonic()
        assert detect(bomb, "lol.xml", "application/xml") is None
        assert time.monotonic() - t0 < 0.5
    # The same bomb embedded as factur-x.xml.
    pdf = pdf_with_attachment("factur-x.xml", bomb)
    t0 = time.monotonic()
    assert detect(pdf, "lol.pdf", "application/pdf") is None
    assert time.monotonic() - t0 < 1.0


def test_external_entities_are_never_fetched(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("DE00SECRET")
    xxe = (
        f'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY s SYSTEM "file://{secret}">]>'
        f'<Invoice xmlns="{einvoice.NS_UBL_INVOICE}" xmlns:cbc="{einvoice.NS_CBC}"><cbc:ID>&s;</cbc:ID></Invoice>'
    ).encode()
    assert detect(xxe, "x.xml", "application/xml") is None


def test_oversized_xml_is_not_parsed(monkeypatch):
    monkeypatch.setattr(einvoice, "MAX_XML_BYTES", 1000)
    assert detect(UBL_XRECHNUNG, "big.xml", "application/xml") is None


# ----------------------------------------------------------------------------- validation


def test_invalid_cii_is_flagged_with_errors():
    broken = (
        CII_EN16931.replace(b"<ram:TypeCode>380</ram:TypeCode>\n", b"")  # BT-3 missing: XSD error
        .replace(b"<ram:Name>M\xc3\xbcller Schraubenhandel GmbH</ram:Name>", b"")  # BT-27 missing
        .replace(b"<ram:GrandTotalAmount>1071.00", b"<ram:GrandTotalAmount>10,71")  # not a decimal
    )
    assert broken != CII_EN16931
    inv = detect(broken, "broken.xml", "application/xml")
    assert inv is not None
    assert inv.syntax == "CII" and inv.profile == "EN 16931"
    assert inv.fields["valid"] is False
    errors = inv.fields["errors"]
    assert 1 <= len(errors) <= einvoice.MAX_ERRORS
    assert any(e.startswith("XSD EN16931") and "TypeCode" in e for e in errors), errors
    assert inv.fields["seller"]["name"] is None
    assert inv.fields["totals"]["gross"] is None
    # Still extracted where present.
    assert inv.fields["invoice_number"] == "RE-2025-0471"
    assert inv.fields["iban"] == "DE02120300000000202051"


def test_invoice_valid_for_en16931_but_not_for_minimum_profile():
    # The EN 16931 body declared as MINIMUM: line items are not allowed there.
    mislabelled = CII_EN16931.replace(b"<ram:ID>urn:cen.eu:en16931:2017</ram:ID>", b"<ram:ID>urn:factur-x.eu:1p0:minimum</ram:ID>")
    inv = detect(mislabelled, "m.xml", "application/xml")
    assert inv.profile == "MINIMUM"
    assert inv.fields["valid"] is False
    assert any("XSD MINIMUM" in e for e in inv.fields["errors"])


def test_ubl_missing_required_terms_is_invalid():
    broken = UBL_XRECHNUNG.replace(b"<cbc:DocumentCurrencyCode>EUR</cbc:DocumentCurrencyCode>", b"").replace(
        b"de75 5121 0800 1245 1261 99", b"DE75512108001245126198"
    )
    inv = detect(broken, "b.xml", "application/xml")
    assert inv.fields["valid"] is False
    assert inv.fields["currency"] is None
    assert "missing BT-5 currency" in inv.fields["errors"]
    assert any("check digits" in e for e in inv.fields["errors"])


def test_no_time_budget_leaves_validity_open():
    inv = detect(CII_EN16931, "r.xml", "application/xml", budget=0)
    assert inv is not None and inv.fields["valid"] is None
    assert inv.fields["invoice_number"] == "RE-2025-0471"
    assert any("skipped" in e for e in inv.fields["errors"])


@pytest.mark.parametrize(
    ("guideline", "profile"),
    [
        ("urn:factur-x.eu:1p0:minimum", "MINIMUM"),
        ("urn:factur-x.eu:1p0:basicwl", "BASIC WL"),
        ("urn:cen.eu:en16931:2017#compliant#urn:factur-x.eu:1p0:basic", "BASIC"),
        ("urn:cen.eu:en16931:2017", "EN 16931"),
        ("urn:cen.eu:en16931:2017#conformant#urn:factur-x.eu:1p0:extended", "EXTENDED"),
        ("urn:zugferd.de:2p0:minimum", "MINIMUM"),
        ("urn:zugferd.de:2p0:basicwl", "BASIC WL"),
        ("urn:cen.eu:en16931:2017:compliant:factur-x.eu:1p0:basic", "BASIC"),
        ("urn:cen.eu:en16931:2017#conformant#urn:zugferd.de:2p0:extended", "EXTENDED"),
        ("urn:cen.eu:en16931:2017#compliant#urn:xeinkauf.de:kosit:xrechnung_3.0", "XRECHNUNG"),
        ("urn:cen.eu:en16931:2017#compliant#urn:xoev-de:kosit:standard:xrechnung_2.3", "XRECHNUNG"),
        (
            "urn:cen.eu:en16931:2017#compliant#urn:xeinkauf.de:kosit:xrechnung_3.0"
            "#conformant#urn:xeinkauf.de:kosit:extension:xrechnung_3.0",
            "XRECHNUNG EXTENSION",
        ),
        ("urn:cen.eu:en16931:2017#compliant#urn:fdc:peppol.eu:2017:poacc:billing:3.0", "PEPPOL BIS Billing 3.0"),
        ("urn:ferd:CrossIndustryDocument:invoice:1p0:comfort", "ZUGFeRD 1.0 COMFORT"),
        ("urn:example:something-else", None),
        (None, None),
    ],
)
def test_profile_from_guideline_id(guideline, profile):
    assert einvoice._profile(guideline) == profile


# ----------------------------------------------------------------------------- item 6


def test_iban_changed():
    inv = detect(UBL_XRECHNUNG, "x.xml", "application/xml")  # IBAN DE75 5121 0800 1245 1261 99
    assert iban_changed(set(), inv) is False  # first invoice of this seller
    assert iban_changed({"DE75 5121 0800 1245 1261 99"}, inv) is False  # same, spaced
    assert iban_changed({"de75512108001245126199", "DE02120300000000202051"}, inv) is False
    assert iban_changed({"DE02120300000000202051"}, inv) is True
    assert iban_changed({"DE02 1203 0000 0000 2020 51"}, inv.as_dict()) is True  # as the stored object
    minimum = detect(CII_MINIMUM, "m.xml", "application/xml")  # no IBAN
    assert iban_changed({"DE02120300000000202051"}, minimum) is False
    assert iban_changed({"DE02120300000000202051"}, None) is False
    assert normalise_iban(" de02 1203-0000 0000 2020 51\n") == "DE02120300000000202051"
    assert normalise_iban("") is None and normalise_iban(None) is None


def test_never_raises_on_odd_arguments():
    assert detect(None, None, None) is None  # type: ignore[arg-type]
    assert detect(bytearray(CII_MINIMUM), None, "") is not None
    assert detect(b"\xff\xfe<\x00", "a.xml", "application/xml") is None


# ZUGFeRD 1.0 COMFORT (CrossIndustryDocument, D14-era namespaces), as ZUGFeRD-invoice.xml.
ZUGFERD1_COMFORT = b"""<?xml version="1.0" encoding="UTF-8"?>
<rsm:CrossIndustryDocument xmlns:rsm="urn:ferd:CrossIndustryDocument:invoice:1p0"
    xmlns:ram="urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:12"
    xmlns:udt="urn:un:unece:uncefact:data:standard:UnqualifiedDataType:15">
  <rsm:SpecifiedExchangedDocumentContext>
    <ram:GuidelineSpecifiedDocumentContextParameter><ram:ID>urn:ferd:CrossIndustryDocument:invoice:1p0:comfort</ram:ID></ram:GuidelineSpecifiedDocumentContextParameter>
  </rsm:SpecifiedExchangedDocumentContext>
  <rsm:HeaderExchangedDocument>
    <ram:ID>471102</ram:ID>
    <ram:Name>RECHNUNG</ram:Name>
    <ram:TypeCode>380</ram:TypeCode>
    <ram:IssueDateTime><udt:DateTimeString format="102">20130305</udt:DateTimeString></ram:IssueDateTime>
  </rsm:HeaderExchangedDocument>
  <rsm:SpecifiedSupplyChainTradeTransaction>
    <ram:ApplicableSupplyChainTradeAgreement>
      <ram:SellerTradeParty>
        <ram:Name>Lieferant GmbH</ram:Name>
        <ram:SpecifiedTaxRegistration><ram:ID schemeID="FC">201/113/40209</ram:ID></ram:SpecifiedTaxRegistration>
        <ram:SpecifiedTaxRegistration><ram:ID schemeID="VA">DE123456789</ram:ID></ram:SpecifiedTaxRegistration>
      </ram:SellerTradeParty>
      <ram:BuyerTradeParty><ram:Name>Kunden AG Mitte</ram:Name></ram:BuyerTradeParty>
    </ram:ApplicableSupplyChainTradeAgreement>
    <ram:ApplicableSupplyChainTradeSettlement>
      <ram:InvoiceCurrencyCode>EUR</ram:InvoiceCurrencyCode>
      <ram:SpecifiedTradeSettlementPaymentMeans>
        <ram:TypeCode>31</ram:TypeCode>
        <ram:PayeePartyCreditorFinancialAccount><ram:IBANID>DE08700901001234567890</ram:IBANID></ram:PayeePartyCreditorFinancialAccount>
      </ram:SpecifiedTradeSettlementPaymentMeans>
      <ram:SpecifiedTradePaymentTerms>
        <ram:DueDateDateTime><udt:DateTimeString format="102">20130404</udt:DateTimeString></ram:DueDateDateTime>
      </ram:SpecifiedTradePaymentTerms>
      <ram:SpecifiedTradeSettlementMonetarySummation>
        <ram:LineTotalAmount currencyID="EUR">198.00</ram:LineTotalAmount>
        <ram:TaxBasisTotalAmount currencyID="EUR">198.00</ram:TaxBasisTotalAmount>
        <ram:TaxTotalAmount currencyID="EUR">37.62</ram:TaxTotalAmount>
        <ram:GrandTotalAmount currencyID="EUR">235.62</ram:GrandTotalAmount>
        <ram:DuePayableAmount currencyID="EUR">235.62</ram:DuePayableAmount>
      </ram:SpecifiedTradeSettlementMonetarySummation>
    </ram:ApplicableSupplyChainTradeSettlement>
  </rsm:SpecifiedSupplyChainTradeTransaction>
</rsm:CrossIndustryDocument>
"""


def test_zugferd_1_pdf_every_field():
    # No ZUGFeRD 1.0 XSD is shipped: only the required terms are checked.
    inv = detect(pdf_with_attachment("ZUGFeRD-invoice.xml", ZUGFERD1_COMFORT), "z.pdf", "application/pdf")
    assert inv is not None and inv.embedded_name == "ZUGFeRD-invoice.xml"
    assert inv.as_dict() == {
        "syntax": "CII",
        "profile": "ZUGFeRD 1.0 COMFORT",
        "seller": {"name": "Lieferant GmbH", "vat_id": "DE123456789"},
        "buyer": {"name": "Kunden AG Mitte"},
        "invoice_number": "471102",
        "issue_date": "2013-03-05",
        "due_date": "2013-04-04",
        "currency": "EUR",
        "totals": {"net": "198.00", "tax": "37.62", "gross": "235.62"},
        "iban": "DE08700901001234567890",
        "valid": True,
        "errors": [],
    }
